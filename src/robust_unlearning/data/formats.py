"""The one on-disk benchmark format (docs/benchmarks.md, "On-disk format") behind validated accessors.

``Benchmark(data_dir)`` serves MUSE-News/Books, WMDP (dialogue setting) and the synthetic world alike. Every
accessor validates its file on first use and raises :class:`BenchmarkError` whose message names the file and the
line (JSONL/CSV), item index (JSON lists) or key (JSON objects) and the offending field — bad data must fail
loudly before any model is trained or scored on it.

Optional extra information (answer aliases, entity ids, template ids) travels in a ``meta`` key of dict items or
in an index-aligned sidecar ``<file>.meta.json`` for list-of-string files (and the XSTest CSV); the real-format
fields are never changed.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Callable

from robust_unlearning.utils.io import DataFormatError, read_json, read_jsonl


class BenchmarkError(ValueError):
    """A benchmark file is missing or invalid; the message names the file (and line/item/field)."""


RAW_SPLITS = ("forget", "retain1", "retain2", "holdout")
# MUSE split names vary across dataset revisions (docs/benchmarks.md, "MUSE"): accept both spellings.
KNOWMEM_VARIANTS = {
    "forget_qa": ("forget_qa",), "forget_qa_icl": ("forget_qa_icl",),
    "retain_qa": ("retain_qa", "retain2_qa"), "retain_qa_icl": ("retain_qa_icl", "retain2_qa_icl"),
    "retain2_qa": ("retain_qa", "retain2_qa"), "retain2_qa_icl": ("retain_qa_icl", "retain2_qa_icl"),
}
PRIVLEAK_VARIANTS = {"forget": ("forget",), "holdout": ("holdout",), "retain": ("retain", "retain2"),
                     "retain2": ("retain", "retain2")}
ROLES = ("system", "user", "assistant")
XSTEST_COLUMNS = ("id", "prompt", "type", "label", "focus", "note")
XSTEST_LABELS = ("safe", "unsafe")


def _type_name(x: Any) -> str:
    return type(x).__name__


def _read_or_fail(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, with a malformed or missing file reported as :class:`BenchmarkError` naming it."""
    try:
        return reader(path)
    except DataFormatError as exc:
        raise BenchmarkError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise BenchmarkError(f"{path}: file not found") from exc


def read_jsonl_numbered(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """Rows of a JSONL file with their 1-based line numbers (blank lines skipped, as ``read_jsonl`` does);
    errors are :class:`BenchmarkError` naming the file and line."""
    path = Path(path)
    rows = _read_or_fail(path, read_jsonl)
    text = path.read_text(encoding="utf-8")
    linenos = [i for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return list(zip(linenos, rows))


class Benchmark:
    """Validated, cached access to ``results/<bench>/data`` (or any directory in the same layout)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir)
        if not self.root.is_dir():
            raise BenchmarkError(f"{self.root}: benchmark data directory not found")
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Benchmark({str(self.root)!r})"

    # ---------------------------------------------------------------------------------------- paths
    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def has(self, relpath: str) -> bool:
        return self.path(relpath).is_file()

    def _resolve(self, candidates: tuple[str, ...] | list[str]) -> str:
        for rel in candidates:
            if self.has(rel):
                return rel
        tried = ", ".join(str(self.path(r)) for r in candidates)
        raise BenchmarkError(f"{tried}: file not found" if len(candidates) == 1
                             else f"none of these files exists: {tried}")

    # ---------------------------------------------------------------------------------------- raw readers
    def _load_json(self, rel: str) -> Any:
        return _read_or_fail(self.path(rel), read_json)

    def _load_jsonl(self, rel: str) -> list[tuple[int, Any]]:
        """Rows with their 1-based line numbers (blank lines skipped, as ``read_jsonl`` does)."""
        return read_jsonl_numbered(self.path(rel))

    def _json(self, rel: str, typ: type, expected: str) -> Any:
        """``rel`` parsed, after checking that it is a ``typ`` ("<file>: expected <expected>, got <type>")."""
        data = self._load_json(rel)
        if not isinstance(data, typ):
            raise BenchmarkError(f"{self.path(rel)}: expected {expected}, got {_type_name(data)}")
        return data

    def _jsonl(self, rel: str, check_row: Callable[[Path, str, Any], None]) -> list:
        """The rows of ``rel``, each passed to ``check_row(path, "line <n>", row)`` first."""
        path = self.path(rel)
        rows = []
        for lineno, row in self._load_jsonl(rel):
            check_row(path, f"line {lineno}", row)
            rows.append(row)
        return rows

    def _cached(self, key: str, loader: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = loader()
        return self._cache[key]

    # ---------------------------------------------------------------------------------------- checkers
    @staticmethod
    def _where(path: Path, loc: str) -> str:
        return f"{path}: {loc}"

    def _check_str_list(self, rel: str, data: Any, allow_empty: bool = True) -> list[str]:
        path = self.path(rel)
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected a JSON list of strings, got {_type_name(data)}")
        for i, x in enumerate(data):
            if not isinstance(x, str):
                raise BenchmarkError(f"{path}: item {i}: expected a string, got {_type_name(x)}")
        if not data and not allow_empty:
            raise BenchmarkError(f"{path}: empty list")
        return data

    def _check_fields(self, path: Path, loc: str, item: Any, fields: dict[str, type]) -> None:
        if not isinstance(item, dict):
            raise BenchmarkError(f"{path}: {loc}: expected a JSON object, got {_type_name(item)}")
        for name, typ in fields.items():
            if name not in item:
                raise BenchmarkError(f"{path}: {loc}: missing field '{name}'")
            if not isinstance(item[name], typ) or (typ is int and isinstance(item[name], bool)):
                raise BenchmarkError(f"{path}: {loc}: field '{name}' must be {typ.__name__}, "
                                     f"got {_type_name(item[name])}")
        if "meta" in item and item["meta"] is not None and not isinstance(item["meta"], dict):
            raise BenchmarkError(f"{path}: {loc}: field 'meta' must be an object, got {_type_name(item['meta'])}")

    def _check_messages(self, path: Path, loc: str, messages: Any, field: str = "messages",
                        need_assistant: bool = True) -> None:
        if not isinstance(messages, list) or not messages:
            raise BenchmarkError(f"{path}: {loc}: field '{field}' must be a non-empty list of messages")
        for j, m in enumerate(messages):
            if not isinstance(m, dict):
                raise BenchmarkError(f"{path}: {loc}: {field}[{j}] must be an object, got {_type_name(m)}")
            for key in ("role", "content"):
                if key not in m:
                    raise BenchmarkError(f"{path}: {loc}: {field}[{j}] missing field '{key}'")
                if not isinstance(m[key], str):
                    raise BenchmarkError(f"{path}: {loc}: {field}[{j}].{key} must be str, "
                                         f"got {_type_name(m[key])}")
            if m["role"] not in ROLES:
                raise BenchmarkError(f"{path}: {loc}: {field}[{j}].role {m['role']!r} not one of {ROLES}")
        roles = [m["role"] for m in messages]
        if "user" not in roles:
            raise BenchmarkError(f"{path}: {loc}: field '{field}' has no user message")
        if need_assistant and "assistant" not in roles[roles.index("user"):]:
            raise BenchmarkError(f"{path}: {loc}: field '{field}' has no assistant message after the user message")

    def _check_chat_row(self, path: Path, loc: str, row: Any) -> None:
        self._check_fields(path, loc, row, {"messages": list})
        self._check_messages(path, loc, row["messages"])

    def _check_prefill_row(self, path: Path, loc: str, row: Any) -> None:
        self._check_chat_row(path, loc, row)
        if row["messages"][-1]["role"] != "assistant":
            raise BenchmarkError(f"{path}: {loc}: last message must be the assistant answer")

    def _check_mcq(self, path: Path, loc: str, row: Any) -> None:
        self._check_fields(path, loc, row, {"question": str, "choices": list, "answer": int})
        choices = row["choices"]
        if len(choices) != 4:
            raise BenchmarkError(f"{path}: {loc}: field 'choices' must hold 4 options, got {len(choices)}")
        for j, c in enumerate(choices):
            if not isinstance(c, str):
                raise BenchmarkError(f"{path}: {loc}: choices[{j}] must be str, got {_type_name(c)}")
        if not 0 <= row["answer"] < len(choices):
            raise BenchmarkError(f"{path}: {loc}: field 'answer' = {row['answer']} out of range 0..3")

    # ---------------------------------------------------------------------------------------- MUSE files
    def raw(self, split: str) -> list[str]:
        """Documents of ``raw/<split>.json`` (split ∈ forget, retain1, retain2, holdout)."""
        def load():
            rel = f"raw/{split}.json"
            if self.has(rel):
                docs = self._check_str_list(rel, self._load_json(rel))
            elif self.has(f"raw/{split}.txt"):  # fallback: only the joined text exists
                docs = [d for d in self._read_text(f"raw/{split}.txt").split("\n\n") if d.strip()]
            else:
                raise BenchmarkError(f"{self.path(rel)}: file not found")
            if split == "forget" and not docs:
                raise BenchmarkError(f"{self.path(rel)}: forget set is empty")
            return docs
        return self._cached(f"raw:{split}", load)

    def raw_text(self, split: str) -> str:
        """``raw/<split>.txt`` (documents joined by "\\n\\n", the input of MUSE chunking), else the join."""
        rel = f"raw/{split}.txt"
        if self.has(rel):
            return self._cached(f"rawtxt:{split}", lambda: self._read_text(rel))
        return "\n\n".join(self.raw(split))

    def _dict_list(self, rel: str, fields: dict) -> list[dict]:
        """A JSON list of objects with the given string fields (MUSE verbmem / knowmem files)."""
        data = self._json(rel, list, f"a JSON list of {{{', '.join(fields)}}}")
        path = self.path(rel)
        for i, item in enumerate(data):
            self._check_fields(path, f"item {i}", item, fields)
        return data

    def verbmem(self) -> list[dict]:
        rel = "verbmem/forget.json"

        return self._cached(rel, lambda: self._dict_list(rel, {"prompt": str, "gt": str}))

    def knowmem(self, name: str) -> list[dict]:
        """``knowmem/<name>.json``; name ∈ forget_qa, forget_qa_icl, retain_qa, retain_qa_icl (retain2_* ok)."""
        if name not in KNOWMEM_VARIANTS:
            raise BenchmarkError(f"unknown knowmem split {name!r}; expected one of {sorted(KNOWMEM_VARIANTS)}")
        rel = self._resolve(tuple(f"knowmem/{n}.json" for n in KNOWMEM_VARIANTS[name]))

        return self._cached(rel, lambda: self._dict_list(rel, {"question": str, "answer": str}))

    def privleak(self, split: str) -> list[str]:
        """``privleak/<split>.json``; split ∈ forget, retain (or retain2), holdout."""
        if split not in PRIVLEAK_VARIANTS:
            raise BenchmarkError(f"unknown privleak split {split!r}; expected forget, retain or holdout")
        rel = self._resolve(tuple(f"privleak/{n}.json" for n in PRIVLEAK_VARIANTS[split]))
        return self._cached(rel, lambda: self._check_str_list(rel, self._load_json(rel),
                                                              allow_empty=split != "forget"))

    # ---------------------------------------------------------------------------------------- MCQ, dialogue
    def mcq(self, split: str) -> list[dict]:
        """Rows {question, choices[4], answer 0–3} (+ subject for MMLU). ``split`` is ``forget``/``retain``/
        ``holdout``/``wmdp-bio`` (→ ``mcq/<split>.jsonl``) or a relative stem such as ``mmlu/test``."""
        rel = f"{split}.jsonl" if "/" in split else f"mcq/{split}.jsonl"

        def load():
            rows = self._jsonl(rel, self._check_mcq)
            if not rows:
                raise BenchmarkError(f"{self.path(rel)}: no MCQ rows")
            return rows
        return self._cached(rel, load)

    def dialogue(self, split: str) -> list[dict]:
        """PRISM dialogue rows ``{"messages": [user, assistant, ...]}`` of ``dialogue/<split>.jsonl``."""
        rel = f"dialogue/{split}.jsonl"

        def load():
            rows = self._jsonl(rel, self._check_chat_row)
            if split == "forget" and not rows:
                raise BenchmarkError(f"{self.path(rel)}: forget set is empty")
            return rows
        return self._cached(rel, load)

    # ---------------------------------------------------------------------------------------- jailbreak
    def prefill(self) -> list[dict]:
        rel = "jailbreak/prefill.jsonl"
        return self._cached(rel, lambda: self._jsonl(rel, self._check_prefill_row))

    def autodan(self) -> dict[str, list[str]]:
        """``{behavior_id: [prompt, ...]}``."""
        rel = "jailbreak/autodan.json"

        def load():
            data = self._json(rel, dict, "a JSON object {id: [prompt]}")
            path = self.path(rel)
            for key, prompts in data.items():
                if not isinstance(prompts, list) or not prompts:
                    raise BenchmarkError(f"{path}: key {key!r}: expected a non-empty list of prompts")
                for j, p in enumerate(prompts):
                    if not isinstance(p, str):
                        raise BenchmarkError(f"{path}: key {key!r}: prompt {j} must be str, got {_type_name(p)}")
            return data
        return self._cached(rel, load)

    def autodan_meta(self) -> dict[str, dict]:
        """Per-key meta of the AutoDAN prompts (empty when the file is absent, as for the real data)."""
        rel = "jailbreak/autodan_meta.json"
        if not self.has(rel):
            return {}

        def load():
            data = self._json(rel, dict, "a JSON object {id: meta}")
            path = self.path(rel)
            for key, m in data.items():
                if not isinstance(m, dict):
                    raise BenchmarkError(f"{path}: key {key!r}: meta must be an object, got {_type_name(m)}")
            return data
        return self._cached(rel, load)

    def multi_turn(self) -> list[dict]:
        """``[{"objective", "conversation": [{role, content}, ...]}]``."""
        rel = "jailbreak/multi_turn.json"

        def load():
            data = self._json(rel, list, "a JSON list of {objective, conversation}")
            path = self.path(rel)
            for i, item in enumerate(data):
                self._check_fields(path, f"item {i}", item, {"objective": str, "conversation": list})
                self._check_messages(path, f"item {i}", item["conversation"], "conversation",
                                     need_assistant=False)
            return data
        return self._cached(rel, load)

    def xstest(self) -> list[dict]:
        """XSTest rows (id, prompt, type, label, focus, note[, answer]); ``meta`` attached from the sidecar."""
        rel = "jailbreak/xstest.csv"

        def load():
            path = self.path(rel)
            text = self._read_text(rel)
            reader = csv.DictReader(io.StringIO(text))
            header = reader.fieldnames or []
            missing = [c for c in XSTEST_COLUMNS if c not in header]
            if missing:
                raise BenchmarkError(f"{path}: line 1: missing column(s) {missing}")
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise BenchmarkError(f"{path}: line {reader.line_num}: wrong number of columns")
                if row["label"] not in XSTEST_LABELS:
                    raise BenchmarkError(f"{path}: line {reader.line_num}: field 'label' must be one of "
                                         f"{XSTEST_LABELS}, got {row['label']!r}")
                if not row["prompt"].strip():
                    raise BenchmarkError(f"{path}: line {reader.line_num}: field 'prompt' is empty")
                rows.append(dict(row))
            sidecar = self._sidecar(rel, len(rows))
            if sidecar is not None:
                for row, m in zip(rows, sidecar):
                    row["meta"] = m
            return rows
        return self._cached(rel, load)

    # ---------------------------------------------------------------------------------------- synthetic extras
    def world(self) -> dict:
        """Ground truth of the synthetic world (``world.json``)."""
        rel = "world.json"

        def load():
            data = self._load_json(rel)
            path = self.path(rel)
            if not isinstance(data, dict) or not isinstance(data.get("entities"), list):
                raise BenchmarkError(f"{path}: expected an object with an 'entities' list")
            for i, ent in enumerate(data["entities"]):
                self._check_fields(path, f"entities[{i}]", ent,
                                   {"id": str, "domain": str, "type": str, "name": str, "attributes": dict})
            return data
        return self._cached(rel, load)

    def manifest(self) -> dict:
        rel = "manifest.json"
        data = self._cached(rel, lambda: self._load_json(rel))
        if not isinstance(data, dict):
            raise BenchmarkError(f"{self.path(rel)}: expected a JSON object")
        return data

    # ---------------------------------------------------------------------------------------- meta, aliases
    def _sidecar(self, rel: str, n_items: int) -> list | None:
        side = f"{rel}.meta.json"
        if not self.has(side):
            return None
        data = self._cached(side, lambda: self._load_json(side))
        if not isinstance(data, list):
            raise BenchmarkError(f"{self.path(side)}: expected a JSON list aligned with {rel}")
        if len(data) != n_items:
            raise BenchmarkError(f"{self.path(side)}: {len(data)} entries but {self.path(rel)} has {n_items} items")
        return data

    def meta(self, relpath: str) -> list | dict | None:
        """Item meta of a file: its sidecar ``<relpath>.meta.json``, else the ``meta`` keys of its dict items
        (``None`` where an item has none), the AutoDAN meta for ``jailbreak/autodan.json``; None if absent."""
        if relpath == "jailbreak/autodan.json":
            return self.autodan_meta()
        items = self._items(relpath)
        sidecar = self._sidecar(relpath, len(items)) if items is not None else None
        if sidecar is not None:
            return sidecar
        if items is None:
            return None
        if items and all(isinstance(x, str) for x in items):
            return None
        return [x.get("meta") if isinstance(x, dict) else None for x in items]

    def _items(self, relpath: str) -> list | None:
        """The validated items of a known relpath (None if not a known list file or absent)."""
        if not self.has(relpath):
            return None
        parts = relpath.split("/")
        stem = parts[-1].rsplit(".", 1)[0]
        top = parts[0] if len(parts) > 1 else ""
        if top == "raw" and relpath.endswith(".json"):
            return self.raw(stem)
        if relpath == "verbmem/forget.json":
            return self.verbmem()
        if top == "knowmem":
            return self.knowmem(stem)
        if top == "privleak":
            return self.privleak(stem)
        if top == "dialogue":
            return self.dialogue(stem)
        if relpath == "jailbreak/prefill.jsonl":
            return self.prefill()
        if relpath == "jailbreak/multi_turn.json":
            return self.multi_turn()
        if relpath == "jailbreak/xstest.csv":
            return self.xstest()
        if relpath.endswith(".jsonl") and top in ("mcq", "mmlu"):
            return self.mcq(relpath[: -len(".jsonl")] if top != "mcq" else stem)
        return None

    @staticmethod
    def aliases(item: dict) -> list[str]:
        """Accepted surface forms of an item's answer, canonical first (for the answer-match judge).

        Uses ``meta.aliases``/``meta.answer`` when present; otherwise the item's own answer field: ``answer``
        (knowmem, XSTest), ``choices[answer]`` (MCQ), ``gt`` (VerbMem) or the first assistant message.
        """
        out: list[str] = []
        meta = item.get("meta") if isinstance(item, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        if isinstance(meta.get("answer"), str):
            out.append(meta["answer"])
        out += [a for a in meta.get("aliases", []) if isinstance(a, str)]
        if not out:
            ans = item.get("answer")
            if isinstance(ans, str):
                out.append(ans)
            elif isinstance(ans, int) and not isinstance(ans, bool) and isinstance(item.get("choices"), list) \
                    and 0 <= ans < len(item["choices"]):
                out.append(item["choices"][ans])
            elif isinstance(item.get("gt"), str):
                out.append(item["gt"])
            else:
                msgs = item.get("messages") or item.get("conversation") or []
                out += [m["content"] for m in msgs if isinstance(m, dict) and m.get("role") == "assistant"][:1]
        seen, uniq = set(), []
        for a in out:
            if a.strip() and a not in seen:
                seen.add(a)
                uniq.append(a)
        return uniq

    # ---------------------------------------------------------------------------------------- helpers
    def _read_text(self, rel: str) -> str:
        path = self.path(rel)
        if not path.is_file():
            raise BenchmarkError(f"{path}: file not found")
        try:
            return path.read_bytes().decode("utf-8-sig" if rel.endswith(".csv") else "utf-8")
        except UnicodeDecodeError as exc:
            raise BenchmarkError(f"{path}: not valid UTF-8 text (byte {exc.start})") from exc

    def _overlap(self, rel_a: str, a: list[str], rel_b: str, b: list[str], what: str) -> None:
        common = set(a) & set(b)
        if common:
            example = sorted(common)[0]
            raise BenchmarkError(f"{self.path(rel_a)} and {self.path(rel_b)}: forget and retain sets overlap: "
                                 f"{len(common)} identical {what} (e.g. {example[:80]!r})")

    @staticmethod
    def _first_user(row: dict) -> str:
        return next(m["content"] for m in row["messages"] if m["role"] == "user")

    def validate(self) -> dict[str, int]:
        """Validate every present file and the cross-file rules; returns {relpath: item count}.

        Rules: each file parses and has the right fields/types; a forget set exists and is non-empty
        (``raw/forget.json`` or ``dialogue/forget.jsonl``); MCQ rows have 4 choices and an answer in 0..3;
        sidecars are index-aligned; forget and retain/holdout sets share no identical text or question.
        """
        counts: dict[str, int] = {}
        if not (self.has("raw/forget.json") or self.has("raw/forget.txt") or self.has("dialogue/forget.jsonl")):
            raise BenchmarkError(f"{self.root}: no forget set (raw/forget.json or dialogue/forget.jsonl)")
        for split in RAW_SPLITS:
            if self.has(f"raw/{split}.json") or self.has(f"raw/{split}.txt"):
                counts[f"raw/{split}.json"] = len(self.raw(split))
                self.meta(f"raw/{split}.json")
        if self.has("verbmem/forget.json"):
            counts["verbmem/forget.json"] = len(self.verbmem())
        for name in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"):
            cands = [f"knowmem/{n}.json" for n in KNOWMEM_VARIANTS[name]]
            if any(self.has(c) for c in cands):
                counts[self._resolve(cands)] = len(self.knowmem(name))
        for split in ("forget", "retain", "holdout"):
            cands = [f"privleak/{n}.json" for n in PRIVLEAK_VARIANTS[split]]
            if any(self.has(c) for c in cands):
                rel = self._resolve(cands)
                counts[rel] = len(self.privleak(split))
                self.meta(rel)
        for sub in ("mcq", "mmlu"):
            d = self.path(sub)
            if d.is_dir():
                for p in sorted(d.glob("*.jsonl")):
                    key = p.stem if sub == "mcq" else f"{sub}/{p.stem}"
                    counts[f"{sub}/{p.name}"] = len(self.mcq(key))
        for split in ("forget", "retain"):
            if self.has(f"dialogue/{split}.jsonl"):
                counts[f"dialogue/{split}.jsonl"] = len(self.dialogue(split))
        if self.has("jailbreak/prefill.jsonl"):
            counts["jailbreak/prefill.jsonl"] = len(self.prefill())
        if self.has("jailbreak/autodan.json"):
            counts["jailbreak/autodan.json"] = len(self.autodan())
            meta = self.autodan_meta()
            unknown = sorted(set(meta) - set(self.autodan()))
            if unknown:
                raise BenchmarkError(f"{self.path('jailbreak/autodan_meta.json')}: keys not in autodan.json: "
                                     f"{unknown[:3]}")
        if self.has("jailbreak/multi_turn.json"):
            counts["jailbreak/multi_turn.json"] = len(self.multi_turn())
        if self.has("jailbreak/xstest.csv"):
            counts["jailbreak/xstest.csv"] = len(self.xstest())
        if self.has("world.json"):
            counts["world.json"] = len(self.world()["entities"])

        # forget set non-empty (accessors raise on an empty forget file)
        if self.has("raw/forget.json") or self.has("raw/forget.txt"):
            self.raw("forget")
        if self.has("dialogue/forget.jsonl"):
            self.dialogue("forget")
        # forget ∩ retain must be empty
        if "raw/forget.json" in counts:
            for other in ("retain1", "retain2", "holdout"):
                if f"raw/{other}.json" in counts:
                    self._overlap("raw/forget.json", self.raw("forget"), f"raw/{other}.json", self.raw(other),
                                  "documents")
        pf = [c for c in ("privleak/forget.json",) if self.has(c)]
        if pf:
            for split in ("retain", "holdout"):
                cands = [f"privleak/{n}.json" for n in PRIVLEAK_VARIANTS[split]]
                if any(self.has(c) for c in cands):
                    self._overlap(pf[0], self.privleak("forget"), self._resolve(cands), self.privleak(split),
                                  "texts")
        kf = "knowmem/forget_qa.json"
        kr = [c for c in ("knowmem/retain_qa.json", "knowmem/retain2_qa.json") if self.has(c)]
        if self.has(kf) and kr:
            self._overlap(kf, [x["question"] for x in self.knowmem("forget_qa")], kr[0],
                          [x["question"] for x in self.knowmem("retain_qa")], "questions")
        if self.has("mcq/forget.jsonl") and self.has("mcq/retain.jsonl"):
            self._overlap("mcq/forget.jsonl", [r["question"] for r in self.mcq("forget")], "mcq/retain.jsonl",
                          [r["question"] for r in self.mcq("retain")], "questions")
        if self.has("dialogue/forget.jsonl") and self.has("dialogue/retain.jsonl"):
            self._overlap("dialogue/forget.jsonl", [self._first_user(r) for r in self.dialogue("forget")],
                          "dialogue/retain.jsonl", [self._first_user(r) for r in self.dialogue("retain")],
                          "questions")
        return counts
