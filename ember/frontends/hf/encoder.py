"""Sentence-transformers folders (#25): what an embedding model is made of, read from the
folder the way sentence-transformers reads it, and its transformer exported to ONNX for
ember's ONNX frontend.

    modules.json                      the modules in order: a Transformer (its folder: `path`),
                                      a Pooling, optionally a Normalize (and a Dense: refused)
    1_Pooling/config.json             pooling_mode (cls, mean, max, mean_sqrt_len_tokens,
                                      lasttoken), or before sentence-transformers 6 one of
                                      pooling_mode_cls_token / _mean_tokens / ... true; include_prompt
    sentence_bert_config.json         max_seq_length, do_lower_case (from version 6 the
                                      tokenizer_config.json's model_max_length is the limit)
    config_sentence_transformers.json prompts ({name: text}), default_prompt_name

The same reader takes the other encoder folders (`read_encoder`):

    a cross-encoder                   sentence-transformers' CrossEncoder folder, or a transformers
                                      folder of a *ForSequenceClassification model with one label:
                                      a score per (query, document) pair, through the folder's
                                      activation (sigmoid by default, as CrossEncoder.predict)
    a transformers folder             a BERT-class model with no sentence-transformers files:
                                      mean pooling, as sentence-transformers loads it
    an ONNX encoder                   model.onnx (or onnx/model.onnx) with tokenizer.json beside
                                      it, in any of the folders above or alone: compiled as it is

The transformer (a BERT-class encoder: config.json + model.safetensors, tokenizer.json
beside them) is traced by torch.onnx from transformers' AutoModel (a cross-encoder's from
AutoModelForSequenceClassification) once and cached under ember's cache folder by the hash
of its weights' and config's bytes; the exported graph maps (input_ids, attention_mask,
token_type_ids) to last_hidden_state, which the caller pools (a cross-encoder's: to logits)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from blake3 import blake3

from ...errors import ModelError, UnsupportedError

# sentence-transformers' pooling modes, by their config keys
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                "pooling_mode_lasttoken": "lasttoken"}
MODE_NAMES = {"mean_sqrt_len_tokens": "mean_sqrt_len"}  # sentence-transformers 6's names that differ
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# a cross-encoder's activations, by the torch class sentence-transformers names
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}
ONNX_FILES = ("model.onnx", "onnx/model.onnx")  # where an ONNX export sits in a folder (optimum's, ours)


@dataclass(frozen=True)
class EncoderConfig:
    """An embedding model's parts: its transformer's folder, how token vectors become one
    (`pooling`, one of POOLING_KEYS' values; `include_prompt` False: a prompt's tokens are
    left out of the pool), whether it is L2-normalized, the longest input in tokens, and
    its named prompts."""

    folder: Path
    transformer: Path
    pooling: str = "mean"
    include_prompt: bool = True
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict = field(default_factory=dict)
    default_prompt_name: str | None = None
    task: str = "embed"           # or "score": a cross-encoder, one logit per (query, document) pair
    activation: str = "identity"  # a cross-encoder's, on its logit: one of ACTIVATIONS' values
    onnx_file: Path | None = None  # an ONNX export given with the folder: compiled instead of exporting one
    chat_template: bool = False    # each text rendered as a user message of the tokenizer's chat template first

    @property
    def tokenizer_file(self) -> Path:
        return self.transformer / "tokenizer.json"

    @property
    def output_name(self) -> str:
        return "logits" if self.task == "score" else "last_hidden_state"


def read_encoder(model: str | os.PathLike) -> EncoderConfig:
    """The EncoderConfig of any encoder ember runs (see the module's notes): a
    sentence-transformers folder (embeddings, or a CrossEncoder's scores), a transformers
    folder (a *ForSequenceClassification model: scores; else embeddings, mean-pooled), or an
    ONNX file with tokenizer.json beside it. ModelError naming what is missing otherwise."""
    path = Path(model)
    if path.is_file() and path.suffix == ".onnx":
        onnx_file, folder = path, path.parent
        if not (folder / "tokenizer.json").is_file() and (folder.parent / "tokenizer.json").is_file():
            folder = folder.parent  # (onnx/model.onnx of a folder)
    elif path.is_dir():
        onnx_file, folder = _onnx_in(path), path
    else:
        raise ModelError(f"{path} is neither an encoder's folder nor an .onnx file")
    settings = folder / "config_sentence_transformers.json"
    if settings.is_file() and _json(settings).get("model_type") == "CrossEncoder":
        config = _read_cross_encoder(folder)
    elif (folder / "modules.json").is_file():
        config = read_sentence_transformer(folder)
    elif (folder / "config.json").is_file() and _classifies(_json(folder / "config.json")):
        config = _read_cross_encoder(folder)
    elif (folder / "config.json").is_file() or onnx_file is not None:
        if not (folder / "tokenizer.json").is_file():
            raise ModelError(f"{folder} holds no tokenizer.json: ember tokenizes with the `tokenizers` library")
        config = EncoderConfig(folder, folder, max_seq_length=_length_limit(folder, None))
    else:
        raise ModelError(f"{folder} is not an encoder: it has no modules.json (sentence-transformers), "
                         "config.json (transformers) or model.onnx")
    onnx_file = onnx_file or _onnx_in(config.transformer)
    return replace(config, onnx_file=onnx_file) if onnx_file is not None else config


def is_encoder(model: str | os.PathLike) -> bool:
    """Whether `model` is an encoder's folder or ONNX file (read_encoder's) rather than a
    generative LLM's folder or GGUF file."""
    path = Path(model)
    if path.is_file():
        return path.suffix == ".onnx"
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return True
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return False
        names = config.get("architectures") or []
        return _classifies(config) or any(n.endswith(("Model", "ForMaskedLM")) for n in names) \
            and not any(n.endswith("ForCausalLM") for n in names)
    return _onnx_in(path) is not None


def _onnx_in(folder: Path) -> Path | None:
    """The ONNX export a folder holds (ONNX_FILES), if any."""
    return next((folder / f for f in ONNX_FILES if (folder / f).is_file()), None)


def _chat_template(folder: Path) -> bool:
    """Whether the tokenizer in `folder` has a chat template."""
    config = folder / "tokenizer_config.json"
    return (folder / "chat_template.jinja").is_file() or (config.is_file() and bool(_json(config).get("chat_template")))


def _classifies(config: dict) -> bool:
    return any(str(n).endswith("ForSequenceClassification") for n in config.get("architectures") or [])


def _length_limit(folder: Path, declared: int | None) -> int | None:
    """The longest input in tokens: `declared` (sentence_bert_config's), else the tokenizer's
    model_max_length, capped by the model's max_position_embeddings (sentence-transformers' rule)."""
    if declared is not None:
        return declared
    limits = []
    if (folder / "tokenizer_config.json").is_file():
        limit = _json(folder / "tokenizer_config.json").get("model_max_length")
        if isinstance(limit, int) and 0 < limit < 1 << 20:  # (transformers writes 1e30 for "none")
            limits.append(limit)
    if (folder / "config.json").is_file():
        positions = _json(folder / "config.json").get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
    return min(limits) if limits else None


def _read_cross_encoder(folder: Path) -> EncoderConfig:
    """A cross-encoder: a *ForSequenceClassification transformers model with one label, its
    activation as sentence-transformers' CrossEncoder chooses it."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: a cross-encoder's folder needs its config.json")
    hf = _json(folder / "config.json")
    labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    if labels != 1:
        raise UnsupportedError(f"{folder}: ember scores with cross-encoders of one label (relevance), not {labels}")
    path = None
    settings = folder / "config_sentence_transformers.json"
    if settings.is_file():
        path = _json(settings).get("activation_fn")
    path = path or (hf.get("sentence_transformers") or {}).get("activation_fn") \
        or hf.get("sbert_ce_default_activation_function")
    name = str(path).rsplit(".", 1)[-1] if path else "Sigmoid"  # (CrossEncoder's default for one label)
    if name not in ACTIVATIONS:
        raise UnsupportedError(f"{folder}: the cross-encoder's activation {path!r} is not one ember applies "
                               f"({', '.join(ACTIVATIONS)})")
    declared, lower = None, False
    if (folder / "sentence_bert_config.json").is_file():
        bert = _json(folder / "sentence_bert_config.json")
        declared, lower = bert.get("max_seq_length"), bool(bert.get("do_lower_case"))
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder}: the cross-encoder lacks tokenizer.json")
    return EncoderConfig(folder, folder, pooling="cls", max_seq_length=_length_limit(folder, declared),
                         do_lower_case=lower, task="score", activation=ACTIVATIONS[name])


def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: {e}") from e


def read_sentence_transformer(folder: str | os.PathLike) -> EncoderConfig:
    """The EncoderConfig of a sentence-transformers folder. ModelError where the folder is
    not one (no modules.json, no Transformer module, no tokenizer.json); UnsupportedError
    for a module ember does not run yet (Dense, ...)."""
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise ModelError(f"{folder} is not a sentence-transformers folder (no modules.json)")
    modules = _json(folder / "modules.json")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]  # (v6 writes e.g. sentence_transformers.base.modules.transformer.Transformer)
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise UnsupportedError(f"{folder}/modules.json: ember does not run sentence-transformers modules {unknown} yet "
                               "(it runs Transformer, Pooling, Normalize)")
    if not kinds or kinds[0] != "Transformer" or kinds.count("Transformer") != 1:
        raise ModelError(f"{folder}/modules.json: the first module must be the one Transformer, not {kinds}")
    transformer = folder / modules[0].get("path", "")
    options: dict = {}
    if "Pooling" in kinds:
        path = folder / modules[kinds.index("Pooling")].get("path", "") / "config.json"
        pooling = _json(path) if path.is_file() else {"pooling_mode": "mean"}
        modes = [mode for key, mode in POOLING_KEYS.items() if pooling.get(key)]
        if "pooling_mode" in pooling:  # (sentence-transformers 6: one name, or a list of them)
            named = pooling["pooling_mode"]
            modes = [MODE_NAMES.get(m, m) for m in ([named] if isinstance(named, str) else named)]
        if len(modes) != 1 or modes[0] not in POOLING_KEYS.values():
            raise UnsupportedError(f"{path}: ember pools with one mode, not {modes or 'none'} "
                                   f"(one of {', '.join(POOLING_KEYS)})")
        options.update(pooling=modes[0], include_prompt=bool(pooling.get("include_prompt", True)))
    else:
        options.update(pooling="mean")
    options["normalize"] = "Normalize" in kinds
    bert = transformer / "sentence_bert_config.json"
    if not bert.is_file():
        bert = folder / "sentence_bert_config.json"
    if bert.is_file():
        settings = _json(bert)
        options.update(max_seq_length=settings.get("max_seq_length"), do_lower_case=bool(settings.get("do_lower_case")))
        # sentence-transformers 6 then renders each text as a user message of the chat template
        options["chat_template"] = "message" in (settings.get("modality_config") or {}) and _chat_template(transformer)
    options["max_seq_length"] = _length_limit(transformer, options.get("max_seq_length"))
    prompts = folder / "config_sentence_transformers.json"
    if prompts.is_file():
        settings = _json(prompts)
        options.update(prompts=dict(settings.get("prompts") or {}), default_prompt_name=settings.get("default_prompt_name"))
    config = EncoderConfig(folder, transformer, **options)
    for needed in (transformer / "config.json", config.tokenizer_file):
        if not needed.is_file():
            raise ModelError(f"{folder}: its transformer lacks {needed.name} ({needed})")
    return config


def export_onnx(config: EncoderConfig, cache: Path) -> Path:
    """The transformer of `config` as an ONNX file under `cache` (exported now, from
    transformers' AutoModel, if no file for these weights is there): inputs INPUT_NAMES
    with dynamic batch and sequence axes (token_type_ids where the model takes them),
    output last_hidden_state (a cross-encoder's: logits). An ONNX file given with the folder
    (config.onnx_file) is returned as it is."""
    if config.onnx_file is not None:
        return config.onnx_file
    weights = sorted(config.transformer.glob("*.safetensors")) or sorted(config.transformer.glob("*.bin"))
    if not weights:
        raise ModelError(f"{config.transformer} holds no weights (*.safetensors)")
    # keyed by content, not by file times: a folder saved again with the same weights (a test's,
    # a copy) finds its export instead of adding another (blake3: ~30 ms for MiniLM's 90 MB)
    digest = blake3((config.transformer / "config.json").read_bytes())
    for w in weights:
        digest.update(w.name.encode())
        with open(w, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    path = cache / f"{'cross-' if config.task == 'score' else ''}encoder-{digest.hexdigest()[:16]}.onnx"
    if path.is_file():
        return path
    try:
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
    except ImportError as e:
        raise ModelError("exporting an encoder needs transformers: pip install transformers") from e
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_config = AutoConfig.from_pretrained(config.transformer, attn_implementation="eager")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # (its report of the pooler's weights, which the export leaves out)
    try:
        if config.task == "score":
            model = AutoModelForSequenceClassification.from_pretrained(config.transformer, config=hf_config)
        elif hf_config.model_type == "bert":
            model = AutoModel.from_pretrained(config.transformer, config=hf_config, add_pooling_layer=False)
        else:
            model = AutoModel.from_pretrained(config.transformer, config=hf_config)
    finally:
        hf_logging.set_verbosity(verbosity)
    names = [n for n in INPUT_NAMES if n != "token_type_ids" or getattr(hf_config, "type_vocab_size", 0)]

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return getattr(self.model(**dict(zip(names, inputs))), output)

    # (an example with padding: traced without it, the mask may fall out of the graph)
    example = [torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]]).clamp(max=hf_config.vocab_size - 1),
               torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), torch.zeros(2, 4, dtype=torch.int64)][:len(names)]
    output = config.output_name
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "seq"}

    def export(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the tracer's notes on shape checks traced as constants)
            torch.onnx.export(Encoder().eval(), tuple(example), tmp, dynamo=False, opset_version=17,
                              input_names=names, output_names=[output], dynamic_axes=axes)

    return write_atomically(path, export)


def write_atomically(path: Path, write) -> Path:
    """`path`, written by `write(temporary path)` beside it and then moved into place, so that
    concurrent callers never see half a file (the temporary one is removed if `write` fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
