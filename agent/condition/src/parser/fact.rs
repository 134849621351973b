//! Facts in the parser: `mesh.<fact>[(args)]` and `history.<fact>(args)`, resolved to a
//! [`Fact`] here, so a tree can only name facts an evaluator answers.

use super::{Parser, Term};
use crate::ConditionError;
use crate::facts::{Fact, Window};
use crate::lexer::Tok;
use crate::tree::{Operand, Path};

impl Parser<'_> {
    /// A fact: `mesh.nodes_alive`, `mesh.nodes_with('type')`, `mesh.fraction_with('type')`,
    /// `mesh.max_severity('type')`, `history.count('type', '10m')`,
    /// `history.last_matched('policy name')`.
    pub(super) fn fact(&mut self) -> Result<Term, ConditionError> {
        let root = self.advance();
        let Tok::Word(scope) = root.tok else {
            return Err(ConditionError::new(
                root.col,
                "expected `mesh` or `history`",
            ));
        };
        if self.peek().tok != Tok::Dot {
            return Err(ConditionError::new(
                root.col,
                format!("`{scope}` is not a value by itself; {}", fact_list(scope)),
            ));
        }
        self.advance();
        let Tok::Word(name) = self.peek().tok else {
            return Err(self.expected(&format!("a fact name after `{scope}.`")));
        };
        let name_token = self.advance();
        let fact = match (scope, name) {
            ("mesh", "nodes_alive") => {
                if self.peek().tok == Tok::LParen {
                    return Err(self.error_here("`mesh.nodes_alive` takes no arguments"));
                }
                Fact::NodesAlive
            }
            ("mesh", "nodes_with" | "fraction_with" | "max_severity") => {
                let mut args = self.string_args(scope, name, 1)?;
                let (kind, _) = args.remove(0);
                match name {
                    "nodes_with" => Fact::NodesWith(kind),
                    "fraction_with" => Fact::FractionWith(kind),
                    _ => Fact::MaxSeverity(kind),
                }
            }
            ("history", "count") => {
                let mut args = self.string_args(scope, name, 2)?;
                let (window, column) = args.remove(1);
                let (kind, _) = args.remove(0);
                let window = Window::parse(&window)
                    .map_err(|message| ConditionError::new(column, message))?;
                Fact::HistoryCount { kind, window }
            }
            ("history", "last_matched") => {
                let mut args = self.string_args(scope, name, 1)?;
                Fact::LastMatched(args.remove(0).0)
            }
            _ => {
                return Err(ConditionError::new(
                    name_token.col,
                    format!("unknown fact `{scope}.{name}`; {}", fact_list(scope)),
                ));
            }
        };
        let end = self.tokens[self.pos - 1].end;
        if matches!(self.peek().tok, Tok::Dot | Tok::LBracket) {
            return Err(self.error_here(format!(
                "`{fact}` is a number: it has no fields or methods below it"
            )));
        }
        self.paths.push((root.start, end));
        Ok(Term::Operand(Operand::Path(Path::Fact(fact))))
    }

    /// `( 'a', 'b' )` with exactly `count` string literals, each with its column.
    fn string_args(
        &mut self,
        scope: &str,
        name: &str,
        count: usize,
    ) -> Result<Vec<(String, usize)>, ConditionError> {
        let what = if count == 1 {
            "one string argument".to_string()
        } else {
            format!("{count} string arguments")
        };
        if self.peek().tok != Tok::LParen {
            return Err(self.expected(&format!("`(` after `{scope}.{name}`: it takes {what}")));
        }
        self.advance();
        let mut args = Vec::with_capacity(count);
        loop {
            let token = self.peek().clone();
            let Tok::Str(text) = token.tok else {
                return Err(self.expected(&format!("`{scope}.{name}(..)` to take {what}")));
            };
            self.advance();
            args.push((text, token.col));
            match self.peek().tok {
                Tok::Comma if args.len() < count => {
                    self.advance();
                }
                Tok::RParen if args.len() == count => {
                    self.advance();
                    return Ok(args);
                }
                _ => {
                    return Err(
                        self.error_here(format!("`{scope}.{name}(..)` takes exactly {what}"))
                    );
                }
            }
        }
    }
}

/// The facts a scope offers, for error messages.
fn fact_list(scope: &str) -> &'static str {
    if scope == "mesh" {
        "the mesh has nodes_alive, nodes_with('type'), fraction_with('type') and max_severity('type')"
    } else {
        "history has count('type', '10m') and last_matched('policy name')"
    }
}
