"""Which grammar engine for constrained decoding: xgrammar, llguidance or outlines_core,
measured on this CPU with the SmolLM2-135M-Instruct tokenizer (vocab 49152, EOS id 2).

For each engine (each in a process of its own, one after the other, so that no engine's
threads slow another's) it measures
  * tokenizer-info setup: building the engine's view of the vocabulary, once;
  * grammar compile: the first compile (cold), and the median of --repeats fresh compiles
    (xgrammar with its compiler cache disabled; llguidance and outlines_core have none);
  * per-token cost: a valid output for each grammar is tokenized (no special tokens) and
    walked token by token: compute the next-token bitmask (timed: "mask"), check that the
    token about to be accepted is allowed, accept it (mask + accept: "total"). Then EOS
    (id 2) must be allowed and the matcher must finish. A token refused by the mask or
    the matcher is a violation and stops the walk (it must never happen). The first walk
    after a compile is reported apart ("cold", mean mask + accept per token: states built
    lazily land there); mask median / p99 / mean and the mean total are over the
    --repeats warm walks that follow;
for four grammars: an order/person JSON schema (enums, nested objects, arrays with
min/maxItems, strings with maxLength and pattern, integers with ranges, numbers,
booleans, additionalProperties false), generic JSON (any object), an email-ish regex and
a choice among four strings (each engine's own form where it has one). It ends with a
one-line recommendation by per-token mask time and compile time among the engines that
made no mistake. Nothing is downloaded.

    python benchmarks/grammar_engines.py [--tokenizer PATH] [--repeats N]

--tokenizer: a saved transformers tokenizer folder (default: the built-in model's tokenizer).
xgrammar and outlines-core are not ember's dependencies: `pip install xgrammar outlines-core`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

DEFAULT_TOKENIZER = ""
VOCAB, EOS = 49152, 2
ENGINES = ("xgrammar", "llguidance", "outlines_core")

_ADDRESS = {"type": "object", "additionalProperties": False, "required": ["street", "city", "country"],
            "properties": {"street": {"type": "string", "maxLength": 60}, "city": {"type": "string", "maxLength": 40},
                           "country": {"enum": ["US", "GB", "DE", "FR", "JP"]}}}
_ITEM = {"type": "object", "additionalProperties": False, "required": ["sku", "quantity", "unit_price"],
         "properties": {"sku": {"type": "string", "maxLength": 16},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                        "unit_price": {"type": "number"}}}
SCHEMA = {
    "title": "Order", "type": "object", "additionalProperties": False,
    "required": ["order_id", "status", "customer", "items", "shipping", "total", "gift", "notes"],
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
        "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
        "customer": {"type": "object", "additionalProperties": False, "required": ["name", "email", "age", "vip"],
                     "properties": {"name": {"type": "string", "maxLength": 40},
                                    "email": {"type": "string", "maxLength": 64},
                                    "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                    "vip": {"type": "boolean"}}},
        "items": {"type": "array", "minItems": 1, "maxItems": 5, "items": _ITEM},
        "shipping": {"type": "object", "additionalProperties": False, "required": ["address", "express"],
                     "properties": {"address": _ADDRESS, "express": {"type": "boolean"}}},
        "total": {"type": "number"},
        "gift": {"type": "boolean"},
        "notes": {"type": "string", "maxLength": 120},
    },
}
ORDER = {"order_id": "ORD-004217", "status": "shipped",
         "customer": {"name": "Ana María Ortega", "email": "ana.ortega@example.com", "age": 34, "vip": True},
         "items": [{"sku": "KB-MX-BRN", "quantity": 1, "unit_price": 129.99},
                   {"sku": "USB-C-2M", "quantity": 3, "unit_price": 9.5}],
         "shipping": {"address": {"street": "14 Rue des Lilas", "city": "Lyon", "country": "FR"}, "express": False},
         "total": 158.49, "gift": False, "notes": "Leave at the door, ring twice. Thanks!"}
ANY_JSON = {"id": 7, "tags": ["a", "b c", "ü\u00e9\u4e2d"], "ok": True, "ratio": -1.25e-3, "none": None,
            "nested": {"list": [1, 2, {"deep": "value \"quoted\" \\ slash"}], "empty": {}, "arr": []}}
EMAIL_RE = r"[a-z0-9._%+-]{1,32}@[a-z0-9-]{1,24}(\.[a-z]{2,6}){1,3}"
CHOICES = ["standard shipping", "express courier", "store pickup", "international priority mail"]
# grammar name -> the valid output walked. The order is written with ensure_ascii=False: with
# the default, "Mar\u00eda" is refused by xgrammar (no escapes at all inside a string with
# maxLength) and by llguidance (\u escapes only for control characters unless
# json_allow_general_unicode_escapes). outlines_core 0.2.14 refuses the email's ".co.uk" at the
# second "." (its Index drops a one-byte token's move out of an accepting state): a real bug.
OUTPUTS = {"schema": json.dumps(ORDER, ensure_ascii=False), "json": json.dumps(ANY_JSON, ensure_ascii=False),
           "regex": "jane.doe42@mail-box.co.uk", "choice": "international priority mail"}


def load_tokenizer(path: str | None):
    if path and os.path.isdir(path):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(path)
    from ember.frontends.hf import load_pretrained
    import ember._builtin as b
    return load_pretrained(b.default_llm(), progress=False).tokenizer()


def byte_level_vocab(tok) -> dict[bytes, list[int]]:
    """{token bytes: ids} of a byte-level BPE tokenizer, without its special tokens: GPT-2's
    bytes_to_unicode table read backwards (e.g. 'Ġ' -> b' ', 'Ċ' -> b'\\n')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for x in range(256):
        if x not in bs:
            bs.append(x)
            cs.append(256 + n)
            n += 1
    unicode_to_byte = {chr(c): b for b, c in zip(bs, cs)}
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    out: dict[bytes, list[int]] = {}
    for s, i in tok.get_vocab().items():
        if i not in special and i < VOCAB:
            out.setdefault(bytes(unicode_to_byte[ch] for ch in s), []).append(i)
    return out


class Xgrammar:
    def __init__(self):
        import xgrammar as xgr
        self.xgr = xgr

    def setup(self, tok):
        xgr = self.xgr
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB)
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False, max_threads=os.cpu_count() or 1)
        self.bitmask = xgr.allocate_token_bitmask(1, VOCAB)

    def compile(self, name):
        c = self.compiler
        if name == "schema":
            return c.compile_json_schema(json.dumps(SCHEMA))
        if name == "json":
            return c.compile_builtin_json_grammar()
        if name == "regex":
            return c.compile_regex(EMAIL_RE)
        return c.compile_grammar("root ::= " + " | ".join(json.dumps(s) for s in CHOICES))

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m):
        m.fill_next_token_bitmask(self.bitmask)

    def accept(self, m, t):
        return m.accept_token(t)

    def finished(self, m):
        return m.accept_token(EOS) and m.is_terminated()


class Llguidance:
    def __init__(self):
        import llguidance, llguidance.hf, llguidance.torch
        self.llg, self.fill_mask = llguidance, llguidance.torch.fill_next_token_bitmask

    def setup(self, tok):
        self.tok = self.llg.hf.from_tokenizer(tok, n_vocab=VOCAB)
        self.bitmask = self.llg.torch.allocate_token_bitmask(1, VOCAB)

    def compile(self, name):
        g = {"schema": lambda: self.llg.LLMatcher.grammar_from_json_schema(SCHEMA),
             "json": lambda: self.llg.grammar_from("json_schema", '{"type": "object"}'),
             "regex": lambda: self.llg.LLMatcher.grammar_from_regex(EMAIL_RE),
             "choice": lambda: self.llg.grammar_from("choice", json.dumps(CHOICES))}[name]()
        # never raises on a bad grammar (is_error() says); much of the work is lazy, done by
        # the first walk's masks (the "cold" column)
        m = self.llg.LLMatcher(self.tok, g)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def matcher(self, compiled):
        compiled.reset()  # the walks reuse the compiled matcher (and what it built lazily)
        return compiled

    def fill(self, m):
        self.fill_mask(m, self.bitmask)

    def accept(self, m, t):
        return m.consume_token(t)

    def finished(self, m):
        return m.is_accepting() and m.consume_token(EOS) and m.is_stopped() and not m.is_error()


class OutlinesCore:
    def __init__(self):
        import outlines_core as oc
        from outlines_core.kernels.torch import allocate_token_bitmask, fill_next_token_bitmask
        from outlines_core.json_schema import build_regex_from_schema
        self.oc, self.fill_mask, self.to_regex = oc, fill_next_token_bitmask, build_regex_from_schema
        self.bitmask = allocate_token_bitmask(VOCAB)

    def setup(self, tok):
        self.vocab = self.oc.Vocabulary(EOS, byte_level_vocab(tok))

    def compile(self, name):
        if name == "json":
            raise NotImplementedError(
                "no generic-JSON grammar (regexes only): build_regex_from_schema('{\"type\": \"object\"}') "
                "unrolls nesting to max_recursion_depth=3 (a 6.9k-char regex, ~8 s to index here) and so "
                "rejects this output's depth-4 object")
        regex = {"schema": lambda: self.to_regex(json.dumps(SCHEMA)),
                 "regex": lambda: EMAIL_RE,
                 "choice": lambda: "(" + "|".join(CHOICES) + ")"}[name]()  # no metacharacters in CHOICES
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, m):
        self.fill_mask(m, self.bitmask)

    def accept(self, m, t):
        m.advance(t, return_tokens=False)
        return True

    def finished(self, m):
        return m.is_finished()


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def walk(eng, compiled, tokens, allowed):
    """Walk `tokens` through a matcher: per token, (mask µs, mask + accept µs); stop at the
    first token that the mask or the matcher refuses. Returns (times, refused index or None, EOS ok)."""
    m, times = eng.matcher(compiled), []
    for i, t in enumerate(tokens):
        t0 = time.perf_counter_ns()
        eng.fill(m)
        t1 = time.perf_counter_ns()
        ok = allowed(t)
        t2 = time.perf_counter_ns()
        try:
            ok = eng.accept(m, t) and ok
        except Exception:  # outlines_core raises on a token with no transition
            ok = False
        t3 = time.perf_counter_ns()
        if not ok:
            return times, i, False
        times.append(((t1 - t0) / 1e3, (t3 - t2 + t1 - t0) / 1e3))
    eng.fill(m)
    return times, None, bool(allowed(EOS)) and eng.finished(m)


def worker(engine: str, tokenizer: str | None, repeats: int, grammars: list[str]) -> dict:
    """Measure one engine; return its row per grammar (or why there is none)."""
    tok = load_tokenizer(tokenizer)
    eng = {"xgrammar": Xgrammar, "llguidance": Llguidance, "outlines_core": OutlinesCore}[engine]()  # imports
    t0 = time.perf_counter()
    eng.setup(tok)
    result = {"setup_ms": (time.perf_counter() - t0) * 1e3, "rows": {}}
    bits = eng.bitmask.numpy()[0]  # shares the bitmask's memory
    allowed = lambda t: (int(bits[t >> 5]) >> (t & 31)) & 1
    for name in grammars:
        try:
            compile_ms = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                compiled = eng.compile(name)
                compile_ms.append((time.perf_counter() - t0) * 1e3)
        except NotImplementedError as e:
            result["rows"][name] = {"skipped": str(e)}
            continue
        except Exception as e:
            result["rows"][name] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            continue
        tokens = tok.encode(OUTPUTS[name], add_special_tokens=False)
        cold, refused, eos_ok = walk(eng, compiled, tokens, allowed)
        warm = []
        for _ in range(repeats if refused is None else 0):
            warm += walk(eng, compiled, tokens, allowed)[0]
        warm = warm or cold
        row = {"compile_first_ms": compile_ms[0], "compile_median_ms": statistics.median(compile_ms[1:]),
               "tokens": len(tokens), "cold_us": statistics.mean(t for _, t in cold) if cold else float("nan"),
               "mask_median_us": statistics.median(m for m, _ in warm) if warm else float("nan"),
               "mask_p99_us": percentile([m for m, _ in warm], 0.99) if warm else float("nan"),
               "mask_mean_us": statistics.mean(m for m, _ in warm) if warm else float("nan"),
               "total_us": statistics.mean(t for _, t in warm) if warm else float("nan"),
               "violations": int(refused is not None), "eos_ok": eos_ok}
        if refused is not None:
            t = tokens[refused]
            row["refused"] = (f"token {refused} {tok.convert_ids_to_tokens(t)!r} (id {t}) "
                              f"after {tok.decode(tokens[:refused])[-30:]!r}")
        result["rows"][name] = row
    return result


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    ap.add_argument("--repeats", type=int, default=5, help="fresh compiles and warm walks per grammar")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--grammars", default=",".join(OUTPUTS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    grammars = args.grammars.split(",")
    if args.worker:
        warnings.filterwarnings("ignore")
        print(json.dumps(worker(args.worker, args.tokenizer, args.repeats, grammars)))
        return

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); repeats={args.repeats}")
    print("compile: first = cold first compile; median = of fresh compiles (xgrammar cache off; "
          "llguidance, outlines_core: no cache)\n")
    header = (f"{'engine':14}{'grammar':8}{'compile first ms':>17}{'median ms':>11}{'tokens':>7}"
              f"{'cold µs/tok':>12}{'mask med µs':>12}{'p99':>8}{'mean':>8}{'total µs/tok':>13}{'viol':>5}  eos")
    results = {}
    for engine in args.engines.split(","):
        cmd = [sys.executable, __file__, "--worker", engine, "--tokenizer", args.tokenizer,
               "--repeats", str(args.repeats), "--grammars", args.grammars]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{engine}: FAILED\n{out.stderr[-2000:]}")
            continue
        results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{engine}: tokenizer-info setup {results[engine]['setup_ms']:.0f} ms")
    print("\n" + header)
    notes = []
    for engine, res in results.items():
        for name, r in res["rows"].items():
            if "error" in r or "skipped" in r:
                print(f"{engine:14}{name:8}  {'FAILED' if 'error' in r else 'skipped'} (see below)")
                notes.append(f"{engine} {name}: {r.get('error') or r.get('skipped')}")
                continue
            print(f"{engine:14}{name:8}{r['compile_first_ms']:17.1f}{r['compile_median_ms']:11.1f}{r['tokens']:7d}"
                  f"{r['cold_us']:12.1f}{r['mask_median_us']:12.1f}{r['mask_p99_us']:8.1f}{r['mask_mean_us']:8.1f}{r['total_us']:13.1f}"
                  f"{r['violations']:5d}  {'ok' if r['eos_ok'] else 'FAIL'}")
            if "refused" in r:
                notes.append(f"{engine} {name}: walk stopped, refused {r['refused']} (timings up to there)")
    for note in notes:
        print("  * " + note)

    # Recommendation: among the engines that ran every grammar they support without a violation,
    # the fastest by geometric mean of the per-grammar mask medians and of the compile medians,
    # over the grammars that all of them ran.
    good = {e: res["rows"] for e, res in results.items()
            if not any("error" in r or ("violations" in r and (r["violations"] or not r["eos_ok"]))
                       for r in res["rows"].values())}
    common = [g for g in grammars if all("mask_median_us" in rows.get(g, {}) for rows in good.values())]
    if good and common:
        gmean = lambda xs: statistics.geometric_mean(max(x, 1e-3) for x in xs)
        mask = {e: gmean(rows[g]["mask_median_us"] for g in common) for e, rows in good.items()}
        comp = {e: gmean(rows[g]["compile_median_ms"] for g in common) for e, rows in good.items()}
        bad = sorted(set(results) - set(good))
        print(f"\nRecommendation: {min(mask, key=mask.get)} by per-token mask time, {min(comp, key=comp.get)} by "
              f"compile time (geometric means over {', '.join(common)}: "
              + ", ".join(f"{e} {mask[e]:.1f} µs/tok, {comp[e]:.1f} ms" for e in good)
              + (f"; left out for incorrect masks or failures: {', '.join(bad)}" if bad else "") + ")")
    else:
        print("\nRecommendation: none (no engine ran the grammars correctly)")


if __name__ == "__main__":
    main()
