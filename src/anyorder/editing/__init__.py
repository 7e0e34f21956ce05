"""Zero-shot editing: inpainting, outpainting, resolution extrapolation, bidirectional features.

Everything here works because an any-order family predicts the token at *any* position next (RandAR's
position instruction token, LPD's position query say which): known tokens are simply put first in the
generation order and teacher-forced through the KV cache, and the unknown ones are generated after them.
Each task asks the model's family for a capability (``known_tokens``, ``canvas``, ``extrapolation``,
``features``: :class:`anyorder.models.Capabilities`); RAR generates in one fixed scan order and has none.

- :func:`inpaint`: regenerate the masked tokens of a code grid given the others (and a class).
- :func:`outpaint`: place a code grid on a larger canvas and generate the rest. A canvas larger
  than the trained grid uses a RoPE table for the canvas (true positions, or NTK-mixed per axis).
- :func:`extrapolate`: RandAR's zero-shot resolution extrapolation (low-res image first, on the
  stride-``factor`` sub-grid, then the rest with the NTK-mixed table and optional spatial guidance).
- :func:`features`: bidirectional per-position features from the causal model (the image is fed
  twice; the second pass sees the whole image) and the raster-order single-pass baseline.
- Masks: :func:`mask_from_image` (pixel mask -> token mask, validated), :func:`half_mask`,
  :func:`box_mask`. Token masks are ``True`` where tokens are *regenerated*.

Sampling. Each task takes the family's sampling policy whole (``sampling=`` and keyword fields, as
:func:`anyorder.sampling.generate`); guidance schedules count known tokens as decoded, as the official
RandAR resolution-extrapolation code does. Spatial guidance (extrapolation) adds a batch copy whose
low-resolution context has a random ``spatial_mask_ratio`` of its token embeddings zeroed; the rows
and their mix (the official ``u + s_c (c - u_s) + s_s (u_s - u)`` with both on) are
:class:`anyorder.sampling.GuidanceRows`. Every decode here is the shared loop
:func:`anyorder.sampling.decode` (known tokens as its teacher-forced prefix, a RoPE table for a
larger canvas).
"""

from anyorder.editing.common import known_first_orders, require_capability
from anyorder.editing.extrapolate import extrapolate, hierarchical_orders
from anyorder.editing.features import default_feature_layer, features, features_by_layer
from anyorder.editing.inpaint import inpaint, outpaint, outpaint_table
from anyorder.editing.masks import MASK_RULES, SIDES, box_mask, half_mask, mask_from_image

__all__ = ["SIDES", "MASK_RULES", "require_capability", "half_mask", "box_mask", "mask_from_image",
           "known_first_orders", "inpaint", "outpaint", "outpaint_table", "extrapolate", "hierarchical_orders",
           "default_feature_layer", "features", "features_by_layer"]
