from mountd.cli import main

main()
