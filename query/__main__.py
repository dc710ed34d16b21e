from query.main import main

main()
