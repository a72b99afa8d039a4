"""Payment providers: the ``PaymentProvider`` protocol, the test provider, Stripe."""
