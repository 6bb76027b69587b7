from sitetwin.cli import main

raise SystemExit(main())
