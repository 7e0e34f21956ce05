"""Layer 4: the shared KV-cached decode loop, guidance and parallel-decoding schedules, ``generate``."""

from anyorder.sampling.decode import GuidanceRows, decode, sample_logits
from anyorder.sampling.generate import generate
from anyorder.sampling.policy import RandARSampling, RARSampling, SamplingConfig, model_sampling, sampling_config
from anyorder.sampling.schedules import GuidanceSchedule, parallel_decoding_schedule

__all__ = ["GuidanceRows", "decode", "sample_logits", "generate", "GuidanceSchedule", "parallel_decoding_schedule",
           "SamplingConfig", "RARSampling", "RandARSampling", "sampling_config", "model_sampling"]
