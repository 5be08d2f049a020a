"""Checks of a run's data files before a task reads them: each must be a regular file (a FIFO would block the read
forever), a CSV file must parse strictly (a quote that is never closed would merge the rest of the file into one
field), and a JSON or JSON-lines object must not repeat a key (the last value would win silently). Errors name the
file and line, and echo at most a short excerpt of the file (:func:`clip`)."""

from __future__ import annotations

import csv
import io
import json
import json.decoder
import json.scanner
import os
import re
import stat
from pathlib import Path
from typing import Any

from hf_seqobj.tasks.base import SPLITS, read_text


EXCERPT_CHARS = 60
"""The most characters of a data file that an error message quotes."""


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`repr(text)`, clipped to about `limit` characters (an excerpt of a file for an error message)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def data_file_paths(data_args) -> list[tuple[str, str]]:
    """`(setting, path)` of every data file the run reads: `train_file` and the others (for translation, whose
    setting is a path prefix, the files `PREFIX.SOURCE_LANG` and `PREFIX.TARGET_LANG`)."""
    paths = []
    for split in SPLITS:
        value = getattr(data_args, f"{split}_file", None)
        if value is None:
            continue
        if data_args.task == "translation":
            paths += [(f"{split}_file", f"{value}.{lang}") for lang in (data_args.source_lang, data_args.target_lang)]
        else:
            paths.append((f"{split}_file", value))
    return paths


def check_data_files(data_args) -> None:
    """Checks every data file of a run (see the module docstring) before the task reads it. A file that does not
    exist is left to the task, which names the setting.

    Raises:
        ValueError: naming the setting or the file and line, and what is accepted.
    """
    for setting, path in data_file_paths(data_args):
        try:
            mode = os.stat(path).st_mode  # (follows links: a link to a FIFO is a FIFO)
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise ValueError(
                f"{setting}: {path} is {kind} (after following links); a data file must be a regular file."
            )
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            check_csv(path, read_text(path))
        elif suffix in (".json", ".jsonl") or (data_args.task == "arithmetic" and suffix != ".csv"):
            check_json_keys(path, read_text(path))


def check_csv(path: str, text: str) -> None:
    """Parses a CSV file strictly (as `read_records` reads it, with `strict=True`).

    Raises:
        ValueError: a quoted field that is never closed, a character after a closing quote, or a field longer than
            the csv module's limit, naming the file and the line where the record starts.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error as error:
        message = str(error)
        if "field larger than field limit" in message:
            problem = f"a field is longer than the csv module's limit of {csv.field_size_limit()} characters"
        elif "unexpected end of data" in message:
            problem = "a quoted field is never closed (a '\"' without its closing '\"' runs to the end of the file)"
        else:
            problem = f"not valid CSV ({message})"
        raise ValueError(
            f'{path}:{start}: {problem}; fields that hold quotes are quoted and double them ("").'
        ) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str, start: int = -1):
        super().__init__(key)
        self.key, self.start = key, start


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _DuplicateKey(next(key for index, key in enumerate(keys) if key in keys[:index]))
    return dict(pairs)


def check_json_keys(path: str, text: str) -> None:
    """Checks that no object of a JSON or JSON-lines file repeats a key. Text that is not JSON is left to the reader,
    which names the line.

    Raises:
        ValueError: naming the file, the line of the repeated key and the key.
    """
    try:
        json.loads(text, object_pairs_hook=_no_duplicates)
        return
    except _DuplicateKey:
        offset = 0
        documents = [(0, text)]
    except json.JSONDecodeError:  # JSON lines: each line on its own
        documents, offset = [], 0
        for line in text.split("\n"):
            documents.append((offset, line))
            offset += len(line) + 1
    for offset, document in documents:
        try:
            json.loads(document, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError:
            continue
        except _DuplicateKey:
            start, key = _locate_duplicate(document)
            line = text.count("\n", 0, offset + start) + 1
            raise ValueError(
                f"{path}:{line}: the key {clip(key)} appears twice in one object; give each field once (JSON keeps "
                "only the last value)."
            ) from None


def _locate_duplicate(document: str) -> tuple[int, str]:
    """The offset and key of the first repeated key in a JSON document (parsed with the pure-Python scanner, whose
    objects know where they are)."""
    decoder = json.JSONDecoder(object_pairs_hook=lambda pairs: pairs)

    def parse_object(s_and_end, *args, **kwargs):
        pairs, end = json.decoder.JSONObject(s_and_end, *args, **kwargs)
        seen = set()
        for key, _ in pairs:
            if key in seen:
                found = list(
                    re.finditer(
                        re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:", s_and_end[0][s_and_end[1] : end]
                    )
                )
                raise _DuplicateKey(key, s_and_end[1] + (found[-1].start() if found else 0))
            seen.add(key)
        return pairs, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(document)
    except _DuplicateKey as duplicate:
        return duplicate.start, duplicate.key
    return 0, ""
