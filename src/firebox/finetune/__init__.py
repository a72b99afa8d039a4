"""Fine-tuning: datasets, supervised fine-tuning jobs, batch inference jobs, the job runner."""
