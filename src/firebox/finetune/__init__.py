"""Fine-tuning: datasets (files in blob storage), SFT jobs, batch inference jobs, the job runner."""
