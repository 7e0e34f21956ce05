"""Layer 7: ``anyorder app``, a web app for any-order generation (Gradio).

Sample and watch the image drawn step by step in generation order, next to a map of when each token was
placed; inpaint a brushed mask and outpaint by side with a family that decodes known tokens first.
:mod:`anyorder.app.core` is the app without the web (iterators of pictures); :mod:`anyorder.app.ui` builds the
Gradio page (``gradio`` is an optional dependency, imported only there); :mod:`anyorder.app.models` finds the
models to serve.
"""

from anyorder.app.core import AppModel, Update, class_choices, generate_updates, inpaint_updates, outpaint_updates
from anyorder.app.models import demo_models, ensure_demo_runs
from anyorder.app.stream import Frame, stream

__all__ = ["AppModel", "Update", "Frame", "class_choices", "generate_updates", "inpaint_updates", "outpaint_updates",
           "stream", "demo_models", "ensure_demo_runs"]
