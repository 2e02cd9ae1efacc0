"""Image sources, decoding, validator challenge recipes and the demo-data generator."""

from natix.data.challenge import CHALLENGES, challenge_recipe, register_challenge

__all__ = ["CHALLENGES", "challenge_recipe", "register_challenge"]
