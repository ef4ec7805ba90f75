"""How the server spends its capacity: admission control with bounded queues (`admission`) and the
work lanes that keep routing ahead of bulk work (`lanes`)."""
