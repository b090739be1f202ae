# The session's shared engines (one per model folder) live with the integration tier.
from tests.integration.conftest import restore_weights, vllm_engine  # noqa: F401
