"""--compile compiles the training step, the model and the objective together: what torch.compile
captures holds the forward passes each objective runs (the classifier's, the distilled student's
two heads, the encoder of masked patch prediction and MAE, every forward pass of an attack), and
the compiled step's loss equals the eager one's within 1e-6.

The graphs are captured with a recording backend that runs them as captured (no C++ compiler,
no minutes of inductor compilation per test); what matters here is what reaches the compiler.
"""

from __future__ import annotations


import pytest
import torch

import vitkit.train.loop as loop
from train_runs import tiny_config
from vitkit.objectives.base import Draws
from vitkit.train import Trainer

# Losses agree to float32 rounding: the captured graphs run the same kernels in the same order.
TOLERANCE = 1e-6

OBJECTIVES = {
    "supervised": {},
    "distill": {"distill": "hard"},
    "pgd": {"adversarial": "pgd", "adv_steps": 2},
    "mpp": {"objective": "mpp"},
    "mae": {"objective": "mae", "decoder_width": 16, "decoder_heads": 2},
}
# Model forward passes per step: the attack's (a gradient per step, then the final iterate),
# then the loss on the attacked and on the clean batch.
FORWARDS = {"supervised": 1, "distill": 1, "pgd": 2 + 1 + 2, "mpp": 1, "mae": 1}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_the_compiled_step_runs_the_objectives_forward_passes_and_agrees_with_eager(
        objective, tiny_npz, teacher, tmp_path, monkeypatch):
    calls = []

    def recording_backend(graph: torch.fx.GraphModule, example_inputs):
        patch_embeddings = sum("conv2d" in str(node.target) for node in graph.graph.nodes)

        def run(*args):
            calls.append(patch_embeddings)
            return graph.forward(*args)
        return run

    monkeypatch.setattr(loop, "compile_step", lambda step: torch.compile(step, backend=recording_backend))
    changes = dict(OBJECTIVES[objective], compile=True)
    if objective == "distill":
        changes["teacher"] = str(teacher)
    cfg = tiny_config(tiny_npz, tmp_path / "run", **changes)
    cfg = cfg.replace(model_options={**cfg.model_options, "dropout": 0.0})
    trainer = Trainer(cfg, quiet=True)
    images, labels = next(iter(trainer.epoch_batches(0)))
    pixels, targets = trainer._input(images, labels)
    targets = targets if trainer.objective.uses_labels else None

    def loss_and_gradients(step) -> tuple[float, dict[str, torch.Tensor]]:
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = step(pixels, targets, Draws(0, (0, 0), range(labels.shape[0]), "cpu"))["loss"]
        loss.backward()
        return float(loss.detach()), {name: p.grad.clone() for name, p in trainer.step_module.named_parameters()
                             if p.grad is not None}

    eager, eager_grads = loss_and_gradients(trainer.step_module)
    calls.clear()
    compiled, compiled_grads = loss_and_gradients(trainer.step)
    assert abs(compiled - eager) <= TOLERANCE * max(1.0, abs(eager))
    # The gradients flow back through the captured graphs to the same parameters, alike.
    assert compiled_grads.keys() == eager_grads.keys() and any(g.abs().sum() > 0 for g in eager_grads.values())
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # Every forward pass of the model went through a compiled graph (one patch embedding each;
    # the distillation teacher, a frozen ViT, adds one of its own).
    teacher_forwards = 1 if objective == "distill" else 0
    assert sum(calls) == FORWARDS[objective] + teacher_forwards
