"""MAC pretraining, finetuning and evaluation on the preprocessed cache."""
