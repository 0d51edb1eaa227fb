"""Result delivery: the outputs stage (AI report lifecycle, release, worklist priorities)."""
