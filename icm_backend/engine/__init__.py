"""The ICM engine: a language model, label scoring, the coherence objective and its search.

Knows nothing of Label Studio or HTTP, and reads no environment but where model files live (model.py):
everything else it needs comes in as arguments.
"""
