"""The supervised stage (the paper's cold start): maximum likelihood of annotated responses."""
