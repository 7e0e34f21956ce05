"""Layer 4: decode jobs, the shared KV-cached decode loop, guidance mixing, ``generate``, batch sampling."""

from anyorder.nn.schedules import GuidanceSchedule, parallel_decoding_schedule
from anyorder.sampling.decode import GuidanceRows, decode, sample_logits
from anyorder.sampling.generate import generate
from anyorder.sampling.job import DecodeJob, edit_job, generation_job
from anyorder.sampling.policy import (
    ParallelSampling,
    RandARSampling,
    RARSampling,
    SamplingConfig,
    SamplingPolicy,
    model_sampling,
    sampling_config,
)

__all__ = ["GuidanceRows", "decode", "sample_logits", "generate", "DecodeJob", "generation_job", "edit_job",
           "GuidanceSchedule", "parallel_decoding_schedule", "SamplingPolicy", "SamplingConfig",
           "ParallelSampling", "RARSampling", "RandARSampling", "sampling_config", "model_sampling"]
