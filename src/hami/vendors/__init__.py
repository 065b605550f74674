"""vendors layer."""
