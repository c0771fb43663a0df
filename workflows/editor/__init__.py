"""The slider editor: glue (:mod:`.core`), image I/O (:mod:`.imaging`), the fitting
bridge (:mod:`.fitbridge`) and the web app (:mod:`.app`).  See docs/editor.md."""
from workflows.editor.core import Editor, Face, load_checkpoint  # noqa: F401
from workflows.editor.imaging import ImageInputError, decode_image, paste_back  # noqa: F401
