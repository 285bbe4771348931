"""tunesmith: instruction finetuning of small LLMs, from a data file to a finetuned model and a report."""

__version__ = "0.1.0"
__all__ = ["Tuner", "__version__"]


def __getattr__(name):
    # The facade pulls in torch; import it only when asked for, so `import tunesmith` stays instant.
    if name == "Tuner":
        from tunesmith.tuner import Tuner

        return Tuner
    raise AttributeError(name)
