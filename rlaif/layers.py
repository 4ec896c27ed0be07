"""The package's layers, bottom to top. A module may import from its own layer or from a layer
below it, never from one above, and the imports never go round in a circle; no module imports
another module's private (`_name`) names. tests/project/test_layers.py reads this table (without
importing the package) and checks every import in rlaif/ against it.

An entry names a module (`rlaif.runner`) or a subpackage (`rlaif.backends`: every module in it).
Each module of the package is in exactly one layer; a new module is added here."""

LAYERS = (
    ("foundation", ("rlaif.version", "rlaif.layers", "rlaif.errors", "rlaif.records", "rlaif.config", "rlaif.resources",
                    "rlaif.tensors", "rlaif.manifest", "rlaif.plotting")),
    ("domain data", ("rlaif.constitution", "rlaif.templates", "rlaif.prompts_io", "rlaif.metrics",
                     "rlaif.hh_rlhf")),
    ("engines", ("rlaif.backends",)),
    ("judging", ("rlaif.judge",)),
    ("execution", ("rlaif.runner", "rlaif.executors")),
    ("stages", ("rlaif.stages",)),
    ("training", ("rlaif.train",)),
    ("run schema", ("rlaif.roles", "rlaif.pipeline_config", "rlaif.run_context")),
    ("evaluation", ("rlaif.eval",)),
    ("orchestration", ("rlaif.iterate", "rlaif.pipeline")),
    ("interfaces", ("rlaif.cli_common", "rlaif.cli_flags", "rlaif.cli_judge", "rlaif.cli_train", "rlaif.cli", "rlaif.annotate",
                    "rlaif.integrations", "rlaif.gguf_server")),
    ("public API", ("rlaif",)),
)

# rlaif/train/: a trainer is its config, its batches and its loss on the shared skeleton
# (rlaif/train/trainer.py); its helpers live in the shared modules (models, examples, maths, rollouts,
# pair_logps…), so no trainer imports another. GRPO is two modules (its maths and config, its loop). A
# recipe runs trainers (rejection sampling: SFT on the best samples; an ensemble: K reward models) and
# may import them. tests/project/test_layers.py checks both.
TRAINERS = {
    "sft": ("rlaif.train.sft",),
    "reward_model": ("rlaif.train.reward_model",),
    "dpo": ("rlaif.train.dpo",),
    "kto": ("rlaif.train.kto",),
    "orpo": ("rlaif.train.orpo",),
    "ppo": ("rlaif.train.ppo",),
    "grpo": ("rlaif.train.grpo", "rlaif.train.grpo_loop"),
}
RECIPES = ("rlaif.train.rejection_sampling", "rlaif.train.reward_ensemble")
