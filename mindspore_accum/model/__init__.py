"""The train Cell for mindspore.train.Model, and the mindspore.train callbacks that guard it."""
