from poets.cli.main import main

main()
