"""Reading a JSON request body as every route family does: an object, or a 400 that says why.

msgspec raises more than ``DecodeError`` on hostile bodies: invalid UTF-8 inside a string raises
``UnicodeDecodeError`` and deep nesting ``RecursionError``; both are the client's mistake, so
both are a 400 here, never a 500. JSON Schema's ``integer`` accepts ``13.0``, so whole-number
floats are taken as integers where the target type wants one.
"""

from __future__ import annotations

import functools

import msgspec

from gateway.errors import ApiError

EXAMPLE = 'Send a JSON object such as {"prompt": "a cat"} with Content-Type: application/json.'


def decode_object(raw: bytes, hint: str = EXAMPLE, empty_ok: bool = False) -> dict:
    """The body as a dict; an empty body is ``{}`` when ``empty_ok``, else a 400."""
    if not raw.strip():
        if empty_ok:
            return {}
        raise ApiError(400, "invalid_json", "the request body is empty", hint)
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({reason})", hint) from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_params", "the request body must be a JSON object", hint)
    return value


def convert(obj: dict, struct_type: type, strict: bool = True, bools_as_ints: bool = False):
    """``msgspec.convert`` that takes whole-number floats (``3.0``) for integer fields; not
    ``strict``, it also takes numbers and booleans written as strings (form fields) and 0/1 for
    booleans; ``bools_as_ints`` takes true/false for integer fields too (pydantic's coercions, which
    A1111's clients rely on)."""
    ints = _int_fields(struct_type)

    def fixed(value):
        if isinstance(value, bool):
            return int(value) if bools_as_ints else value
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return msgspec.convert({k: fixed(v) if k in ints else v for k, v in obj.items()}, struct_type, strict=strict)


@functools.cache
def _int_fields(struct_type: type) -> frozenset[str]:
    names = set()
    for field in msgspec.inspect.type_info(struct_type).fields:
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        kinds = [kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind for kind in kinds]
        if any(isinstance(kind, msgspec.inspect.IntType) for kind in kinds):
            names.add(field.encode_name)
    return frozenset(names)
