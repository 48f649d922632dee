"""`python -m convert`: Keras -> float32 / float16 / int8 TFLite with embedded metadata, verified."""
