"""smirk_edge.export: checkpoint -> gated model bundle, on the workstation; engine build and selftest on the target.

Importing this package (or any of its modules) loads no engine and no torch: heavy imports happen
inside the functions that need them.

The public entry point is this package's :data:`__all__`: :func:`export_bundle` with
:class:`ExportOptions` (what ``smirk-edge export`` runs), its :class:`ExportReport`, the
:class:`GateError` it raises, and the table of artifact kinds (:data:`KINDS`). Code outside the
toolchain (``smirk_edge.benchmarks``) uses only these; the modules below are the toolchain's own.

==========================  =========================================================================
module                      public API
==========================  =========================================================================
``pipeline``                :class:`ExportOptions`, :func:`export_bundle` -> :class:`ExportReport`
``kinds``                   ``KINDS`` (one ``ArtifactKind`` per artifact: file, format, precision,
                            builder, gate engine, ladder, CPU class), ``FORMATS``; how to add a kind
``onnx_export``             ``export_encoder``, ``export_decoder``, ``fuse``, ``export_fused``, ``slim``,
                            ``OPSET`` (18), ``ExportError``
``quantize``                ``to_fp16``, ``quantize_int8`` (flavours ``x86`` / ``tensorrt``)
``openvino_export``         ``to_ir`` (fp32 / fp16 / int8 via NNCF), ``read_ir_metadata``
``calibration``             ``collect_crops`` -> ``CropSet`` (``.feeds()`` is the calibration contract),
                            ``ort_reader``, ``nncf_dataset``, ``synthetic_face_crops`` (CI only)
``gate``                    ``torch_outputs`` (the reference), ``accuracy_metrics``, ``Thresholds``,
                            ``DEFAULT_THRESHOLDS``, ``Comparator``, ``GateResult``, ``GateError``,
                            ``format_table``, ``load_report``
``golden``                  ``write_golden``, ``load_golden``, ``selftest``
``tensorrt_build``          ``BuildOptions``, ``build_engine``, ``build_serialized``, ``source_artifact``
``metadata``                ``model_metadata``, ``read_onnx_metadata``, ``set_onnx_metadata``
``cli``                     ``export_main``, ``build_engine_main``, ``selftest_main``
==========================  =========================================================================
"""

from .gate import GateError
from .kinds import FORMATS, KINDS, PRECISIONS, ArtifactKind
from .pipeline import ExportOptions, ExportReport, export_bundle

__all__ = ["ArtifactKind", "ExportOptions", "ExportReport", "FORMATS", "GateError", "KINDS", "PRECISIONS",
           "export_bundle"]
