"""A decoupled Python-backend model with a fixed number of slots and a fixed cost per token (see config.pbtxt.in)."""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.slots = threading.Semaphore(int(params["slots"]))
        self.token_s = float(params["token_s"])

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._answer, args=(request,), daemon=True).start()
        return None

    def _answer(self, request):
        sender = request.get_response_sender()
        tokens = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().reshape(-1)[0])
        with self.slots:
            for i in range(tokens):
                if i:
                    time.sleep(self.token_s)
                out = pb_utils.Tensor("text_output", np.array(["hello "], dtype=object))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
