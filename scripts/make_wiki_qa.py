"""Write datasets/wiki_summaries_qa.jsonl: 50 questions over the Wikipedia summaries corpus
(ARTIFACTS.md, fetched by scripts/fetch-artifacts.sh), in Search-R1's JSONL schema.

Every golden answer is checked to occur verbatim in the passage named last in its evidence list;
that passage's corpus id goes into `evidence_ids` (used by ARCap's evidence-given runs when
retrieval finds no passage holding an answer). 42 single-hop questions (`wiki-1hop`) and 8 that
need a second passage found from the first (`wiki-2hop`).

    python3 scripts/make_wiki_qa.py .cache/artifacts/wiki-summaries/corpus.jsonl datasets/wiki_summaries_qa.jsonl
"""
import json, sys
corpus, out_path = sys.argv[1], sys.argv[2]
rows, ids = {}, {}
for l in open(corpus):
    r = json.loads(l); t = r['contents'].split('\n')[0].strip('"'); rows[t] = r['contents']; ids[t] = r['id']
Q = [
 # (question, answers, source passage titles, data_source)
 ("Where is the headquarters of Apple?", ["Cupertino, California", "Cupertino"], ["Apple Inc."], "wiki-1hop"),
 ("In what year was Apple founded?", ["1976"], ["Apple Inc."], "wiki-1hop"),
 ("Who wrote Pride and Prejudice?", ["Jane Austen"], ["Pride and Prejudice"], "wiki-1hop"),
 ("In which year was Pride and Prejudice published?", ["1813"], ["Pride and Prejudice"], "wiki-1hop"),
 ("In which country is Angel Falls?", ["Venezuela"], ["Angel Falls"], "wiki-1hop"),
 ("What is the deepest oceanic trench on Earth?", ["Mariana Trench"], ["Mariana Trench"], "wiki-1hop"),
 ("What was Gustave Flaubert's debut novel?", ["Madame Bovary"], ["Gustave Flaubert"], "wiki-1hop"),
 ("Who wrote The War of the Worlds?", ["H. G. Wells"], ["The War of the Worlds"], "wiki-1hop"),
 ("Along which river does the city of Chelyabinsk run?", ["Miass River", "Miass"], ["Chelyabinsk"], "wiki-1hop"),
 ("What was Luciano Pavarotti's nickname?", ["King of the High Cs"], ["Luciano Pavarotti"], "wiki-1hop"),
 ("Which ocean borders Mozambique to the east?", ["Indian Ocean"], ["Mozambique"], "wiki-1hop"),
 ("In which city is the Egyptian Museum?", ["Cairo"], ["Egyptian Museum"], "wiki-1hop"),
 ("Whom did Scipio Africanus defeat at the Battle of Zama?", ["Hannibal"], ["Scipio Africanus"], "wiki-1hop"),
 ("With whom did Gene Kelly co-direct musical films?", ["Stanley Donen"], ["Gene Kelly"], "wiki-1hop"),
 ("What is Niccolò Machiavelli's best-known political treatise?", ["The Prince"], ["Niccolò Machiavelli"], "wiki-1hop"),
 ("Which city was the capital of the Abbasid Caliphate?", ["Baghdad"], ["Abbasid Caliphate"], "wiki-1hop"),
 ("What tree is also known as the maidenhair tree?", ["Ginkgo biloba", "ginkgo"], ["Ginkgo biloba"], "wiki-1hop"),
 ("In which country was the board game Go invented?", ["China"], ["Go (game)"], "wiki-1hop"),
 ("How many symphonies did Ralph Vaughan Williams write?", ["nine", "9"], ["Ralph Vaughan Williams"], "wiki-1hop"),
 ("In which city is the Eiffel Tower?", ["Paris"], ["Eiffel Tower"], "wiki-1hop"),
 ("After which engineer is the Eiffel Tower named?", ["Gustave Eiffel"], ["Eiffel Tower"], "wiki-1hop"),
 ("What is the highest mountain on Earth above sea level?", ["Mount Everest"], ["Mount Everest"], "wiki-1hop"),
 ("Who painted the Mona Lisa?", ["Leonardo da Vinci"], ["Mona Lisa"], "wiki-1hop"),
 ("Which Mughal emperor commissioned the Taj Mahal?", ["Shah Jahan"], ["Taj Mahal"], "wiki-1hop"),
 ("Into which sea does the Nile empty?", ["Mediterranean Sea", "Mediterranean"], ["Nile"], "wiki-1hop"),
 ("What is the capital of Kenya?", ["Nairobi"], ["Kenya"], "wiki-1hop"),
 ("What is the capital of Brazil?", ["Brasília", "Brasilia"], ["Brazil"], "wiki-1hop"),
 ("Which planet is known as the Red Planet?", ["Mars"], ["Mars"], "wiki-1hop"),
 ("Who shared the 1945 Nobel Prize in Physiology or Medicine with Alexander Fleming?", ["Howard Florey", "Ernst Chain"], ["Alexander Fleming"], "wiki-1hop"),
 ("Which French sculptor designed the Statue of Liberty?", ["Frédéric Auguste Bartholdi", "Bartholdi"], ["Statue of Liberty"], "wiki-1hop"),
 ("In which city is the Colosseum?", ["Rome"], ["Colosseum"], "wiki-1hop"),
 ("Where is Microsoft headquartered?", ["Redmond, Washington", "Redmond"], ["Microsoft"], "wiki-1hop"),
 ("Who founded Amazon?", ["Jeff Bezos"], ["Amazon (company)"], "wiki-1hop"),
 ("Who wrote the Harry Potter novels?", ["J. K. Rowling"], ["Harry Potter"], "wiki-1hop"),
 ("Who wrote Don Quixote?", ["Miguel de Cervantes", "Cervantes"], ["Don Quixote"], "wiki-1hop"),
 ("In which country is Mount Kilimanjaro?", ["Tanzania"], ["Mount Kilimanjaro"], "wiki-1hop"),
 ("What is the capital of Iceland?", ["Reykjavík", "Reykjavik"], ["Iceland"], "wiki-1hop"),
 ("In which city was Galileo Galilei born?", ["Pisa"], ["Galileo Galilei"], "wiki-1hop"),
 ("Who first released the Linux kernel?", ["Linus Torvalds"], ["Linux"], "wiki-1hop"),
 ("In which year did construction of the Berlin Wall begin?", ["1961"], ["Berlin Wall"], "wiki-1hop"),
 ("What is the deepest lake in the world?", ["Lake Baikal"], ["Lake Baikal"], "wiki-1hop"),
 ("Who was President of South Africa from 1994 to 1999?", ["Nelson Mandela"], ["Nelson Mandela"], "wiki-1hop"),
 # two hops: the answer lies in a second passage found from the first
 ("What is the capital of the country where Angel Falls is located?", ["Caracas"], ["Angel Falls", "Venezuela"], "wiki-2hop"),
 ("Which country lies to the northeast of the country where Mount Kilimanjaro stands?", ["Kenya"], ["Mount Kilimanjaro", "Tanzania"], "wiki-2hop"),
 ("What is the capital of the country in which Lake Baikal lies?", ["Moscow"], ["Lake Baikal", "Russia"], "wiki-2hop"),
 ("How many people live in the city that is home to the Egyptian Museum?", ["9.8 million", "more than 9.8 million"], ["Egyptian Museum", "Cairo"], "wiki-2hop"),
 ("In what year was the debut novel of Gustave Flaubert first published in full?", ["1857"], ["Gustave Flaubert", "Madame Bovary"], "wiki-2hop"),
 ("Which sea lies to the southwest of the country where the Taj Mahal is?", ["Arabian Sea"], ["Taj Mahal", "India"], "wiki-2hop"),
 ("What is the capital of the country that gave the Statue of Liberty to the United States?", ["Paris"], ["Statue of Liberty", "France"], "wiki-2hop"),
 ("What nickname is given to the author of the play Hamlet?", ["Bard of Avon", "the Bard"], ["Hamlet", "William Shakespeare"], "wiki-2hop"),
]
ok = True
out = []
for i, (q, ans, titles, src) in enumerate(Q):
    last = rows.get(titles[-1])
    if last is None:
        print("MISSING passage", titles[-1]); ok = False; continue
    if not any(a in last for a in ans):
        print("answer not in", titles[-1], ":", q, ans, "|", last[:600].replace("\n"," ")); ok = False
    for t in titles:
        if t not in rows:
            print("MISSING passage", t); ok = False
    out.append({"id": f"wiki-{i:03d}", "question": q, "golden_answers": ans, "data_source": src,
                "evidence_ids": [ids[titles[-1]]]})
print(len(out), "questions", "ok" if ok else "PROBLEMS")
if not ok:
    sys.exit(1)
with open(out_path, "w") as f:
    for row in out:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
