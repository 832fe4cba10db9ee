"""The build pipeline: a validated config -> checks -> a plan -> a Composer Trainer.

- :func:`t5composer.run.preflight.preflight`: every check that needs no model and no data, in one pass.
- :func:`t5composer.run.plan.plan_run`: the tokenizer, model config, data and batch sizes of the run.
- :func:`t5composer.run.build.build_trainer`: the plan, the data's loaders and the components, as a Trainer.

The dry run (:mod:`t5composer.dry_run`) runs the same steps with the model on the meta device and no data.
"""
