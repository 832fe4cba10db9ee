"""Composer callbacks of t5composer (registered by name in t5composer.components)."""
