"""`python -m cli`: the same as the `cifar-jobs` console script."""

from cli.main import main

raise SystemExit(main())
