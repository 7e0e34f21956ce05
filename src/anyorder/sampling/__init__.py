"""Layer 4: the shared KV-cached decode loop, guidance and parallel-decoding schedules, ``generate``."""

from anyorder.sampling.decode import GuidanceRows, decode, sample_logits
from anyorder.sampling.generate import generate
from anyorder.sampling.schedules import GuidanceSchedule, parallel_decoding_schedule

__all__ = ["GuidanceRows", "decode", "sample_logits", "generate", "GuidanceSchedule", "parallel_decoding_schedule"]
