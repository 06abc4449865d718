"""Find the external-data files an ONNX model refers to, without the ``onnx`` package.

ONNX Runtime and OpenVINO read a tensor's ``external_data`` ``location`` relative to the model
file, so a hostile model could point it at any file on the device (``../../etc/shadow``). The
bundle refuses such models: every external-data location must be a plain file name listed (and
hashed) in the same manifest artifact. This module walks the protobuf wire format of the messages
that can hold tensors (ModelProto -> GraphProto -> initializers, sparse initializers, node
attributes and their sub-graphs; FunctionProto nodes and the default values of function attributes
(``attribute_proto``); training-info graphs) and returns every location it finds.
"""

from __future__ import annotations

from .errors import BundleError

# field numbers from onnx.proto3
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO = 7, 11
_MAX_DEPTH = 64


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BundleError("ONNX file is truncated or not a protobuf (bad varint)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield ``(field_number, wire_type, value)``; length-delimited values are memoryviews."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise BundleError("ONNX file is truncated (a field runs past the end)")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise BundleError(f"ONNX file is not a valid protobuf (wire type {wire})")
        if pos > len(buf):
            raise BundleError("ONNX file is truncated")
        yield field, wire, value


def _tensor(buf, out: list[str]) -> None:
    external = False
    for f, w, v in _fields(buf):
        if f == _TENSOR_DATA_LOCATION and w == 0 and v == 1:
            external = True
        elif f == _TENSOR_EXTERNAL_DATA and w == 2:
            entry = {k: bytes(val).decode("utf-8", "replace") for k, wt, val in _fields(v) if wt == 2}
            if entry.get(_ENTRY_KEY) == "location":
                out.append(entry.get(_ENTRY_VALUE, ""))
    if external and not out:
        out.append("")  # external data declared without a location


def _sparse(buf, out, depth) -> None:
    for f, w, v in _fields(buf):
        if f in (_SPARSE_VALUES, _SPARSE_INDICES) and w == 2:
            _tensor(v, out)


def _attribute(buf, out, depth) -> None:
    for af, aw, av in _fields(buf):
        if aw != 2:
            continue
        if af in (_ATTR_T, _ATTR_TENSORS):
            _tensor(av, out)
        elif af in (_ATTR_G, _ATTR_GRAPHS):
            _graph(av, out, depth + 1)
        elif af in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
            _sparse(av, out, depth)


def _node(buf, out, depth) -> None:
    for f, w, v in _fields(buf):
        if f == _NODE_ATTRIBUTE and w == 2:
            _attribute(v, out, depth)


def _graph(buf, out, depth) -> None:
    if depth > _MAX_DEPTH:
        raise BundleError("ONNX graph nests sub-graphs too deeply")
    for f, w, v in _fields(buf):
        if w != 2:
            continue
        if f == _GRAPH_INITIALIZER:
            _tensor(v, out)
        elif f == _GRAPH_SPARSE_INITIALIZER:
            _sparse(v, out, depth)
        elif f == _GRAPH_NODE:
            _node(v, out, depth)


def external_data_locations(data: bytes) -> list[str]:
    """Every external-data ``location`` in a serialized ONNX model (``""`` = declared without one)."""
    buf = memoryview(data)
    out: list[str] = []
    for f, w, v in _fields(buf):
        if w != 2:
            continue
        if f == _MODEL_GRAPH:
            _graph(v, out, 0)
        elif f == _MODEL_TRAINING_INFO:
            for tf, tw, tv in _fields(v):
                if tf in (_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM) and tw == 2:
                    _graph(tv, out, 0)
        elif f == _MODEL_FUNCTIONS:
            for ff, fw, fv in _fields(v):
                if fw != 2:
                    continue
                if ff == _FUNCTION_NODE:
                    _node(fv, out, 0)
                elif ff == _FUNCTION_ATTRIBUTE_PROTO:
                    _attribute(fv, out, 0)
    return out
