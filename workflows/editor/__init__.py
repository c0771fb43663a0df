"""The slider editor (docs/editor.md).

- :mod:`workflows.editor.core`: ``Editor`` (checkpoint + 3DMM: prepare, edit, regress,
  render_face, paste), ``Face``, ``load_checkpoint``;
- :mod:`workflows.editor.fitbridge`: detect / fit / align a photo with the fit stage's code;
- :mod:`workflows.editor.imaging`: guarded decoding, PNG encoding, paste-back (no torch at import);
- :mod:`workflows.editor.app`: ``create_app(editor, photos)``, the FastAPI web app.

Nothing is imported here, so the cheap checks of ``slidergan edit`` run before torch loads.
"""
