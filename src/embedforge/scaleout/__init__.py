"""Scale-out on Ray (optional extra ``embedforge[ray]``): corpus embedding with Ray Data, the LLM
fan-out of synthesis with Ray Core, and the ``--engine local|ray`` flags of the commands.

Importing this package does not import Ray; a job does, and says how to install it when absent.
"""

from .cluster import ENGINES, EngineOptions, add_engine_arguments, ray_cluster, require_ray
from .embed_job import ActorStats, EmbedJobConfig, EmbedJobSummary, run_embed_job
from .parts import PartSpec, plan_parts, read_part

__all__ = [
    "ENGINES",
    "ActorStats",
    "EmbedJobConfig",
    "EmbedJobSummary",
    "EngineOptions",
    "PartSpec",
    "add_engine_arguments",
    "plan_parts",
    "ray_cluster",
    "read_part",
    "require_ray",
    "run_embed_job",
]
