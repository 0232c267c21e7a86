"""A ClientApp whose every call fails the way a missing dependency on the workers would."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    raise ModuleNotFoundError("No module named 'my_missing_dependency'")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    raise ModuleNotFoundError("No module named 'my_missing_dependency'")
