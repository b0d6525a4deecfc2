"""RLAIF experiments: SFT -> AI labels -> reward models -> RL -> evaluation, from one screen."""
