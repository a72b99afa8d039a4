"""The model catalog: base models, LoRA add-ons, embedding and image models, price classes."""
