"""GPU weight push to a vLLM server over NCCL (vLLM's RL weight-transfer API).

UNTESTED HERE (no GPU on our machines): written against vLLM 0.32's
`vllm.distributed.weight_transfer` (NCCLTrainerWeightTransferEngine +
HTTPVLLMWeightSyncClient, which drive /init_weight_transfer_engine,
/start_weight_update, /update_weights, /finish_weight_update). The server must
be started with `--weight-transfer-config '{"backend": "nccl"}'`; the trainer
process joins an NCCL group as rank 0 and broadcasts each tensor (checkpoint
names, on the GPU) to the server's workers.
"""

from __future__ import annotations

from typing import Iterator


class NCCLWeightPusher:
    def __init__(self, url: str, *, master_address: str = "127.0.0.1", master_port: int = 29551):
        self.url, self.master_address, self.master_port = url, master_address, master_port
        self._engine = None
        self._source = None

    def push(self, tensors: list[tuple[str, "object"]]) -> None:
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        from rollouts.http import request_json

        if self._source is None:
            class _Listed(WeightSource):
                """The latest update's tensors, re-iterable each round."""

                items: list = []

                def metadata(self) -> list:
                    return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.items]

                def __iter__(self) -> Iterator:
                    for n, t in self.items:  # one tensor on the GPU at a time
                        yield n, t.cuda()

            self._source = _Listed()
        self._source.items = list(tensors)
        if self._engine is None:
            world = int(request_json(self.url + "/get_world_size")["world_size"])
            self._engine = NCCLTrainerWeightTransferEngine.trainer_init(
                NCCLTrainerInitInfo(master_address=self.master_address, master_port=self.master_port,
                                    world_size=world + 1, rank=0),
                client=HTTPVLLMWeightSyncClient(self.url), source=self._source,
            )
        self._engine.send_weights()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
