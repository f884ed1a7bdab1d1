"""Config files shared by the tests of early errors and of validate-without-weights."""

import yaml

from quantcl import StagePlugin


def write_run_config(tmp_path, model, **changes):
    """A small YAML run config (fp32, synthetic math task, LoRA on q/v) in ``tmp_path``, with ``changes``."""
    cfg = {"model": str(model), "precision": "fp32", "output_dir": str(tmp_path / "out"), "progress": False,
           "tasks": {"recipe": "synthetic", "kwargs": {"n_train": 2, "n_eval": 2, "tasks": ["math"]}},
           "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, **changes}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path



class EvaluationWatcher(StagePlugin):
    """A plug-in with an ``on_evaluate`` hook, named in configs as ``{_component_: _configs.EvaluationWatcher}``."""

    def on_evaluate(self, trainer, row, task, result):
        self.rows = [*getattr(self, "rows", []), row]
