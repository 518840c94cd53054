from borg_gate.cli import main

raise SystemExit(main())
