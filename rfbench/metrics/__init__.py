"""Quality metrics: torch-fidelity for images, exact distances for toy2d."""

from rfbench.metrics.fidelity import Extractor, samples_to_metrics
from rfbench.metrics.toy import energy_distance, sliced_wasserstein

__all__ = ["Extractor", "energy_distance", "samples_to_metrics", "sliced_wasserstein"]
