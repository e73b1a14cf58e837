"""An exporter's failure told in one line: which operator it could not translate, and why."""

from __future__ import annotations

import re

from trainer.export.errors import ExportError, UnsupportedOpError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.:]+)', overload='(\w+)'\)"),
    re.compile(r"operator '([\w.:]+)'"),
    re.compile(r"unrecognized namespace ([\w.:]+)"),
    re.compile(r"target=torch\.ops\.([\w.]+)\]"),
)


def unsupported_op(*errors: BaseException | None) -> str | None:
    """The operator named by the first of ``errors`` (or their causes) that names one."""
    for err in errors:
        while err is not None:
            text = _ANSI.sub("", str(err))
            for pattern in _OP_PATTERNS:
                m = pattern.search(text)
                if m:
                    op = m.group(1)
                    if pattern is _OP_PATTERNS[0] and m.group(2) != "default":
                        op = f"{op}.{m.group(2)}"
                    if "::" not in op and "." in op:  # aten._linalg_svd.default -> aten::...
                        ns, _, rest = op.partition(".")
                        op = f"{ns}::{rest.removesuffix('.default')}"
                    return op
            err = err.__cause__ or err.__context__
    return None


def summary(err: BaseException) -> str:
    """One or two lines saying why an exporter failed."""
    text = _ANSI.sub("", str(err))
    if "## Exception summary" in text:
        lines = [
            ln.strip()
            for ln in text.split("## Exception summary", 1)[1].splitlines()
            if ln.strip().startswith("<class")
        ]
        if lines:
            return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", lines[0])[:400]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {first[:400]}"


def export_failure(
    what: str, opset: int | None, dynamo_err: BaseException | None, legacy_err: BaseException | None
) -> ExportError:
    """The error to raise when no exporter produced a file: the op if one is named, a hint."""
    op = unsupported_op(legacy_err, dynamo_err)
    tried = []
    if legacy_err is not None:
        tried.append(f"legacy exporter: {summary(legacy_err)}")
    if dynamo_err is not None:
        tried.append(f"dynamo exporter: {summary(dynamo_err)}")
    opset_txt = f"opset {opset}" if opset else "the default opset"
    hint = (
        "try another opset (to_onnx(..., opset=N)), replace or decompose the op in forward(), "
        "or export to TorchScript with to_torchscript(..., method='trace')"
    )
    if op:
        return UnsupportedOpError(
            f"{what}: operator {op!r} is not supported by the ONNX exporters at {opset_txt}; "
            f"{hint}. Details: " + " | ".join(tried),
            op=op,
        )
    return ExportError(f"{what}: ONNX export failed; {hint}. Details: " + " | ".join(tried))
