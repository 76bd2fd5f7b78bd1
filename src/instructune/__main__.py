from instructune.cli import main

raise SystemExit(main())
