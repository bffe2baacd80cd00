"""Slow end-to-end check of the translation presets on real data (``pytest -m slow``).

Each preset trains briefly on the Ding sentence pairs (Debian ``trans-de-en``) and translates held-out
test sources greedily. An untrained model emits the same few tokens for every source (BLEU below 0.1);
the bounds sit at about half of what these step counts reached on one core (the Transformer 0.41 BLEU,
chrF 10.3, after 600 steps, where a bound of 1.5 failed; the RNN 0.58 BLEU, chrF 11.5, after 300 steps,
untrained 0.005), so a model that learns nothing or decodes wrongly fails.
"""

from __future__ import annotations

import pytest

from tests.test_data import needs_de_en, needs_tokenizers

# preset -> (training steps, BLEU bound on the first 300 test sources, greedy)
BRIEF = {"de_en_transformer": (600, 0.2), "de_en_rnn": (300, 0.25)}


@pytest.mark.slow
@needs_de_en
@needs_tokenizers
@pytest.mark.parametrize("preset", sorted(BRIEF))
def test_a_briefly_trained_preset_translates_held_out_sentences(preset, tmp_path):
    from attnkit.runs import RunConfig, evaluate_run, train_run

    steps, bound = BRIEF[preset]
    config = RunConfig.load(preset, [f"train.max_steps={steps}", "train.minutes=0", "train.progress=false",
                                     f"train.eval_every={steps}", f"train.checkpoint_every={steps}"])
    train_run(config, tmp_path / "run", log=lambda s: None)
    untrained = evaluate_run(_untrained(tmp_path / "run"), beam_size=1, limit=300).metrics
    trained = evaluate_run(tmp_path / "run", beam_size=1, limit=300).metrics
    print(preset, "untrained", untrained, "trained", trained)
    assert trained["sentences"] == 300
    assert untrained["bleu"] < 0.1 and trained["bleu"] >= bound, (untrained, trained)


def _untrained(run_dir):
    """The run with its model's weights drawn afresh (same seed, same shapes)."""
    import torch

    from attnkit.runs import load_run

    run = load_run(run_dir, log=lambda s: None)
    torch.manual_seed(0)
    for module in run.model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return run
