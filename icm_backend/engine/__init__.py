"""The ICM engine: a language model, label scoring, the coherence objective and its search.

Knows nothing of Label Studio, HTTP or the environment: everything it needs comes in as arguments.
"""
