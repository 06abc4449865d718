"""Generator of the stand-in FLAME-format face model (``python -m smirk_edge.training.standin``).

``collect`` runs MediaPipe in its own environment; ``build`` (numpy only) fits the model; ``mesh``,
``render`` and ``pictures`` are helpers. See docs/standin_face_model.md.
"""
