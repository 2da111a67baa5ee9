"""The oracle server's argument values (pure): one concrete value out of bfcl's possible answers,
and Java/JavaScript parameters as source text that bfcl's own type converters read back.
"""
from __future__ import annotations


def first(options: list):
    # Some required parameters only allow "" in bfcl's data: "" is then the answer.
    return next((o for o in options if o != ""), "")


def pick(value):
    """A possible-answer value -> one concrete value (dict values are option lists)."""
    if isinstance(value, dict):
        return {k: first(opts) for k, opts in value.items() if any(o != "" for o in opts)}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [pick(v) for v in value]
    return value


def _java(value, typ: str, nested: str | None = None) -> str:
    """Java source text that bfcl's java_type_converter turns back into `value`."""
    if isinstance(value, str):
        return value  # already source text: a variable, an expression, a string
    if isinstance(value, bool):
        return "true" if value else "false"
    if typ == "long":
        return f"{value}L"
    if typ == "float":
        return f"{value}f"
    if typ == "Array":  # elements go through java_type_converter(element, nested)
        return "new Object[]{" + ", ".join(_java(v, nested) for v in value) + "}"
    if typ == "ArrayList":  # String/char elements lose their quotes, others are converted
        return "new ArrayList<>(Arrays.asList(" + ", ".join(
            _java_value(v) if nested in (None, "String", "char") else _java(v, nested)
            for v in value) + "))"
    if typ == "HashMap":
        return "new HashMap<String, Object>() {{ " + " ".join(
            f'put("{k}", {_java_value(v)});' for k, v in value.items()) + " }}"
    return _number(value)


def _java_value(v) -> str:
    """A literal for bfcl's parse_java_value (strings quoted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else _number(v)


def _number(v) -> str:
    # 500.0 -> "500": bfcl's integer and float converters both accept plain digits
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _js(value, typ: str, nested: str | None = None) -> str:
    """JavaScript source text that bfcl's js_type_converter turns back into `value`."""
    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f"'{v}'"
        if isinstance(v, list):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {lit(x)}" for k, x in v.items()) + "}"
        return _number(v)

    if isinstance(value, str):
        return value  # already source text
    if isinstance(value, bool):
        return "true" if value else "false"
    if typ == "Bigint":
        return f"{value}n"
    return lit(value)


def source_text(options: list, prop: dict, language: str) -> str:
    """Java/JS parameters are source text: the first encoding of an allowed value that bfcl's
    own type converter turns back into an allowed value."""
    from bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter import java_type_converter
    from bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter import js_type_converter

    typ, nested = prop.get("type", "String"), (prop.get("items") or {}).get("type")
    encode, convert = (_java, java_type_converter) if language == "java" else (_js, js_type_converter)
    values = [pick(o) for o in options if o != ""] or [""]
    texts = [encode(v, typ, nested) for v in values]
    for text in texts:
        try:
            if convert(text, typ, nested) in values:
                return text
        except Exception:  # bfcl's converters raise on types they do not implement
            continue
    return texts[0]
