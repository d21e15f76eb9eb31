from hdmap_ad.cli import main

raise SystemExit(main())
